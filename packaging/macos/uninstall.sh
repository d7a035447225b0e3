#!/bin/sh
# Uninstall Gatehouse (installed as /Library/Application Support/Gatehouse/uninstall.sh; run with
# sudo). Deactivate the system extension (macOS may ask for approval), stop the helper, remove
# every installed file, and forget the package receipt. Keeps nothing but what you saved first:
# copy /Library/Application Support/Gatehouse/policy.toml elsewhere if you want it.
set -u
if [ "$(id -u)" != 0 ]; then
    echo "uninstall.sh: run it as root (sudo)" >&2
    exit 1
fi
APP=/Applications/Gatehouse.app
if [ -x "$APP/Contents/MacOS/Gatehouse" ]; then
    "$APP/Contents/MacOS/Gatehouse" deactivate --wait 60 || echo "uninstall.sh: the system extension was not deactivated; remove it with: systemextensionsctl uninstall <TEAMID> dev.gatehouse.extension" >&2
fi
launchctl bootout system/dev.gatehouse.helper 2>/dev/null || true
for u in $(ps -axo uid= -o comm= | awk '/Gatehouse.app\/Contents\/MacOS\/Gatehouse$/ {print $1}' | sort -u); do
    launchctl bootout "gui/$u/dev.gatehouse.notifier" 2>/dev/null || true
done
rm -f /Library/LaunchAgents/dev.gatehouse.notifier.plist
rm -rf "$APP"
rm -f /Library/LaunchDaemons/dev.gatehouse.helper.plist
rm -f /usr/local/bin/gatehouse
rm -rf "/Library/Application Support/Gatehouse"
rm -rf /var/log/gatehouse
pkgutil --forget dev.gatehouse.pkg >/dev/null 2>&1 || true
echo "Gatehouse removed"
