#!/bin/sh
# Build Gatehouse.pkg: Gatehouse.app (host-app/) with the system extension inside, the helper
# daemon and its launchd job, the CLI, and the install, upgrade and uninstall scripts.
#
#   build-pkg.sh                    sign, package, and (with NOTARY_PROFILE) notarize and staple;
#                                   on macOS with Xcode's command line tools, after
#   GATEHOUSE_TEAM_ID=$TEAM_ID cargo build --release --target aarch64-apple-darwin --target x86_64-apple-darwin
#   build-pkg.sh --stage-only DIR   lay out the payload and scripts in DIR without signing or
#                                   packaging; runs anywhere (binaries that were not built become
#                                   placeholders), so the layout is tested on Linux
#                                   (shared/defaults/tests/packaging.rs).
#
# The team id compiles in the helper's code-signing requirement and the team-bound fast-path
# pins (a system extension gets no arguments). Names and paths here must match shared/defaults.
#
# Environment (full build):
#   TEAM_ID          Apple developer team id (10 characters)
#   APP_SIGN_ID      "Developer ID Application: ... (TEAM_ID)"
#   PKG_SIGN_ID      "Developer ID Installer: ... (TEAM_ID)"
#   EXT_PROFILE      provisioning profile granting com.apple.developer.endpoint-security.client
#   APP_PROFILE      provisioning profile granting com.apple.developer.system-extension.install
# Optional: NOTARY_PROFILE (a `notarytool store-credentials` keychain profile: submit --wait, then
# staple), VERSION (default from Cargo.toml), BUILD (default 1), OUT (default target/pkg).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
stage_only=
if [ "${1:-}" = --stage-only ]; then
	[ $# -eq 2 ] || { echo "usage: build-pkg.sh [--stage-only DIR]" >&2; exit 2; }
	stage_only=1
	OUT=$2
	TEAM_ID=${TEAM_ID:-ABCDE12345}
	APP_SIGN_ID=${APP_SIGN_ID:-}
else
	: "${TEAM_ID:?set TEAM_ID}" "${APP_SIGN_ID:?set APP_SIGN_ID}" "${PKG_SIGN_ID:?set PKG_SIGN_ID}"
	: "${EXT_PROFILE:?set EXT_PROFILE}" "${APP_PROFILE:?set APP_PROFILE}"
	if [ "${GATEHOUSE_TEAM_ID:-$TEAM_ID}" != "$TEAM_ID" ]; then
		echo "build-pkg.sh: GATEHOUSE_TEAM_ID ($GATEHOUSE_TEAM_ID) differs from TEAM_ID ($TEAM_ID)" >&2
		exit 1
	fi
fi
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)}
BUILD=${BUILD:-1}
OUT=${OUT:-$root/target/pkg}

subst() { sed -e "s/@TEAM_ID@/$TEAM_ID/g" -e "s/@VERSION@/$VERSION/g" -e "s/@BUILD@/$BUILD/g" "$1" > "$2"; }
# universal NAME DEST: both architectures in one binary (staging: whatever was built, or a
# placeholder that says what belongs there).
universal() {
	arm="$root/target/aarch64-apple-darwin/release/$1"
	x86="$root/target/x86_64-apple-darwin/release/$1"
	if [ -z "$stage_only" ]; then
		lipo -create -output "$2" "$arm" "$x86"
	elif [ -f "$arm" ]; then
		cp "$arm" "$2"
	else
		printf '#!/bin/sh\necho "placeholder for %s (built on macOS)" >&2\nexit 1\n' "$1" > "$2"
	fi
	chmod 755 "$2"
}
sign() { [ -n "$stage_only" ] || codesign --force --options runtime --timestamp "$@"; }

rm -rf "$OUT" && mkdir -p "$OUT/work" "$OUT/payload" "$OUT/scripts"
work=$OUT/work
payload=$OUT/payload

# 1. Gatehouse.app with the system extension inside; signed inside-out (the extension bundle,
#    then the app around it), with the hardened runtime.
app="$payload/Applications/Gatehouse.app"
mkdir -p "$app/Contents/MacOS"
subst "$here/app/Info.plist" "$app/Contents/Info.plist"
universal Gatehouse "$app/Contents/MacOS/Gatehouse"
sysx="$app/Contents/Library/SystemExtensions/dev.gatehouse.extension.systemextension"
mkdir -p "$sysx/Contents/MacOS"
subst "$here/extension/Info.plist" "$sysx/Contents/Info.plist"
universal gatehouse-extension "$sysx/Contents/MacOS/gatehouse-extension"
subst "$here/extension/gatehouse-extension.entitlements" "$work/ext.entitlements"
subst "$here/extension/host-app.entitlements" "$work/app.entitlements"
if [ -z "$stage_only" ]; then
	cp "$EXT_PROFILE" "$sysx/Contents/embedded.provisionprofile"
	cp "$APP_PROFILE" "$app/Contents/embedded.provisionprofile"
fi
sign --entitlements "$work/ext.entitlements" -s "$APP_SIGN_ID" "$sysx"
sign --entitlements "$work/app.entitlements" -s "$APP_SIGN_ID" "$app"

# 2. The helper, the CLI, the uninstaller, the launchd job and the notifier agent.
support="$payload/Library/Application Support/Gatehouse"
mkdir -p "$support" "$payload/Library/LaunchDaemons" "$payload/Library/LaunchAgents" "$payload/usr/local/bin"
universal gatehouse-helper "$support/gatehouse-helper"
universal gatehouse "$payload/usr/local/bin/gatehouse"
sign -i dev.gatehouse.helper -s "$APP_SIGN_ID" "$support/gatehouse-helper"
sign -i dev.gatehouse.cli -s "$APP_SIGN_ID" "$payload/usr/local/bin/gatehouse"
cp "$here/uninstall.sh" "$support/uninstall.sh"
chmod 755 "$support/uninstall.sh"
subst "$here/launchd/dev.gatehouse.helper.plist" "$payload/Library/LaunchDaemons/dev.gatehouse.helper.plist"
chmod 644 "$payload/Library/LaunchDaemons/dev.gatehouse.helper.plist"
# The block notifier agent (one per user session, `Gatehouse notify`).
cp "$here/launchd/dev.gatehouse.notifier.plist" "$payload/Library/LaunchAgents/dev.gatehouse.notifier.plist"
chmod 644 "$payload/Library/LaunchAgents/dev.gatehouse.notifier.plist"

# 3. Scripts: preinstall stops an old helper, postinstall makes the directories, boots the
#    helper's job and asks for the extension's activation or replacement.
cp "$here/scripts/preinstall" "$here/scripts/postinstall" "$OUT/scripts/"
chmod 755 "$OUT/scripts/preinstall" "$OUT/scripts/postinstall"
subst "$here/distribution.xml" "$work/distribution.xml"
cp "$here/component.plist" "$work/component.plist"
if [ -n "$stage_only" ]; then
	echo "staged the payload in $payload and the scripts in $OUT/scripts (not signed, not packaged)"
	exit 0
fi

# 4. Component package (app not relocatable), product archive with the distribution file, signed.
pkgbuild --root "$payload" --component-plist "$work/component.plist" \
	--identifier dev.gatehouse.pkg --version "$VERSION" \
	--scripts "$OUT/scripts" --install-location / "$work/gatehouse-component.pkg"
pkg="$OUT/Gatehouse-$VERSION.pkg"
productbuild --distribution "$work/distribution.xml" --package-path "$work" \
	--sign "$PKG_SIGN_ID" "$pkg"

# 5. Notarize and staple when credentials are given.
if [ -n "${NOTARY_PROFILE:-}" ]; then
	xcrun notarytool submit "$pkg" --keychain-profile "$NOTARY_PROFILE" --wait
	xcrun stapler staple "$pkg"
	echo "built, notarized and stapled $pkg"
else
	echo "built $pkg (not notarized: set NOTARY_PROFILE to submit and staple)"
fi
