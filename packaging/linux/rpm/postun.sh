# gatehouse %postun: on erase forget the units and remove the runtime directory. As rpm does
# with every package, a modified policy is kept as /etc/gatehouse/policy.toml.rpmsave and the
# logs stay in /var/log/gatehouse (rpm has no purge; remove them by hand).
if [ "$1" -eq 0 ]; then
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        systemctl daemon-reload || true
    fi
    rm -rf /run/gatehouse
    # The package's files are gone; the directories rpm created for them are not owned by the
    # package (cargo-generate-rpm lists files only), so remove them once empty.
    rmdir /usr/libexec/gatehouse /usr/share/doc/gatehouse 2>/dev/null || true
fi
exit 0
