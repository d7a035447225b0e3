# gatehouse %post: enable and start on a fresh install, restart in order after an upgrade.
. "${DPKG_ROOT:-}/usr/libexec/gatehouse/maint.sh"
if [ "$1" -eq 1 ]; then gh_fresh_install; else gh_after_upgrade; fi
exit 0
