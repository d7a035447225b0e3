# gatehouse maintainer-script functions, installed as /usr/libexec/gatehouse/maint.sh and sourced
# by the .deb and .rpm scripts that run while the package's files are present (postinst/%post,
# prerm/%preun). The scripts that run after removal (postrm/%postun) carry their few lines
# themselves.
#
# Order rules (the invariants in ARCHITECTURE.md):
# - never leave the extension running without its helper: start the helper first, stop the
#   extension first;
# - on upgrade keep both running while the files are replaced (protection never lapses), then
#   restart the extension FIRST: it pins the new helper and CLI binaries at start, so the
#   helper's restart that follows is decided on the fast path (slow-path-never-gates-itself);
# - nothing here talks to systemd when it is not running (containers, chroots, image builds)
#   or when installing into another root ($DPKG_ROOT / rpm --root).

gh_systemd() {
    [ -z "${DPKG_ROOT:-}" ] && [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1
}

gh_fresh_install() {
    [ -d "${DPKG_ROOT:-}/var/log/gatehouse" ] || install -d -m 0700 "${DPKG_ROOT:-}/var/log/gatehouse"
    if gh_systemd; then
        systemctl daemon-reload || true
        systemctl enable gatehouse-helper.service gatehouse-extension.service || true
        systemctl start gatehouse-helper.service || true
        systemctl start gatehouse-extension.service || true
    fi
}

gh_after_upgrade() {
    if gh_systemd; then
        systemctl daemon-reload || true
        systemctl try-restart gatehouse-extension.service || true
        systemctl try-restart gatehouse-helper.service || true
    fi
}

gh_before_remove() {
    if gh_systemd; then
        systemctl disable gatehouse-extension.service gatehouse-helper.service || true
        systemctl stop gatehouse-extension.service || true
        systemctl stop gatehouse-helper.service || true
    fi
}
