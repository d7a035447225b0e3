#!/bin/sh
# Build Gatehouse.pkg: the host app with the embedded system extension, the helper daemon, its
# launchd plist and the CLI. Run on macOS with Xcode command line tools, after
# `GATEHOUSE_TEAM_ID=$TEAM_ID cargo build --release --target aarch64-apple-darwin --target x86_64-apple-darwin`
# (the team id compiles in the helper's code-signing requirement and the team-bound fast-path
# pins: a system extension gets no arguments). Names and paths here must match shared/defaults
# (checked by shared/defaults/tests/packaging.rs).
#
# Required environment:
#   TEAM_ID            Apple developer team id (10 characters)
#   APP_SIGN_ID        "Developer ID Application: ... (TEAM_ID)"
#   PKG_SIGN_ID        "Developer ID Installer: ... (TEAM_ID)"
#   HOST_APP           path to a built Gatehouse.app (the small Swift/ObjC host that submits
#                      OSSystemExtensionRequest when launched with `activate`/`deactivate`)
#   EXT_PROFILE        provisioning profile granting com.apple.developer.endpoint-security.client
# Optional: VERSION (default from Cargo.toml), BUILD (default 1), OUT (default target/pkg).
set -eu

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
: "${TEAM_ID:?set TEAM_ID}" "${APP_SIGN_ID:?set APP_SIGN_ID}" "${PKG_SIGN_ID:?set PKG_SIGN_ID}"
: "${HOST_APP:?set HOST_APP}" "${EXT_PROFILE:?set EXT_PROFILE}"
VERSION=${VERSION:-$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)}
BUILD=${BUILD:-1}
OUT=${OUT:-$root/target/pkg}

subst() { sed -e "s/@TEAM_ID@/$TEAM_ID/g" -e "s/@VERSION@/$VERSION/g" -e "s/@BUILD@/$BUILD/g" "$1" > "$2"; }
universal() { lipo -create -output "$2" \
	"$root/target/aarch64-apple-darwin/release/$1" "$root/target/x86_64-apple-darwin/release/$1"; }

rm -rf "$OUT" && mkdir -p "$OUT/work" "$OUT/payload"
work=$OUT/work
payload=$OUT/payload

# 1. The system extension bundle inside the host app.
app="$payload/Applications/Gatehouse.app"
mkdir -p "$payload/Applications"
cp -R "$HOST_APP" "$app"
sysx="$app/Contents/Library/SystemExtensions/dev.gatehouse.extension.systemextension"
mkdir -p "$sysx/Contents/MacOS"
subst "$here/extension/Info.plist" "$sysx/Contents/Info.plist"
universal gatehouse-extension "$sysx/Contents/MacOS/gatehouse-extension"
cp "$EXT_PROFILE" "$sysx/Contents/embedded.provisionprofile"
subst "$here/extension/gatehouse-extension.entitlements" "$work/ext.entitlements"
subst "$here/extension/host-app.entitlements" "$work/app.entitlements"
codesign --force --options runtime --timestamp --entitlements "$work/ext.entitlements" -s "$APP_SIGN_ID" "$sysx"
codesign --force --options runtime --timestamp --entitlements "$work/app.entitlements" -s "$APP_SIGN_ID" "$app"

# 2. The helper, the CLI and the launchd job.
support="$payload/Library/Application Support/Gatehouse"
mkdir -p "$support" "$payload/Library/LaunchDaemons" "$payload/usr/local/bin"
universal gatehouse-helper "$support/gatehouse-helper"
universal gatehouse "$payload/usr/local/bin/gatehouse"
codesign --force --options runtime --timestamp -i dev.gatehouse.helper -s "$APP_SIGN_ID" "$support/gatehouse-helper"
codesign --force --options runtime --timestamp -i dev.gatehouse.cli -s "$APP_SIGN_ID" "$payload/usr/local/bin/gatehouse"
subst "$here/launchd/dev.gatehouse.helper.plist" "$payload/Library/LaunchDaemons/dev.gatehouse.helper.plist"
chmod 644 "$payload/Library/LaunchDaemons/dev.gatehouse.helper.plist"

# 3. Scripts: load the helper job after install (it starts on demand; loading never waits on it).
mkdir -p "$work/scripts"
cat > "$work/scripts/postinstall" <<'POST'
#!/bin/sh
# The extension never creates directories on macOS (defaults::installer_dirs).
mkdir -p "/Library/Application Support/Gatehouse"
mkdir -p "/var/log/gatehouse"
launchctl bootout system/dev.gatehouse.helper 2>/dev/null || true
launchctl bootstrap system /Library/LaunchDaemons/dev.gatehouse.helper.plist
exit 0
POST
chmod 755 "$work/scripts/postinstall"

# 4. Component and product packages.
pkgbuild --root "$payload" --identifier dev.gatehouse.pkg --version "$VERSION" \
	--scripts "$work/scripts" --install-location / "$work/gatehouse-component.pkg"
productbuild --package "$work/gatehouse-component.pkg" --sign "$PKG_SIGN_ID" \
	"$OUT/Gatehouse-$VERSION.pkg"
echo "built $OUT/Gatehouse-$VERSION.pkg (notarize with: xcrun notarytool submit --wait ...)"
