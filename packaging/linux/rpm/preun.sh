# gatehouse %preun: stop (extension first) only on erase; an upgrade keeps both running.
. "${DPKG_ROOT:-}/usr/libexec/gatehouse/maint.sh"
if [ "$1" -eq 0 ]; then gh_before_remove; fi
exit 0
