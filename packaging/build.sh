#!/usr/bin/env bash
# Builds the .deb and the .rpm from this tree:
#   target/debian/otpgate_<version>-1_<arch>.deb      (cargo-deb)
#   target/generate-rpm/otpgate-<version>-1.<arch>.rpm (cargo-generate-rpm, no rpmbuild needed)
# Installs the packaging tools it lacks, builds the release binary once, and stages the
# generated assets (man pages, shell completions, docs) in target/assets, which the
# [package.metadata.deb] and [package.metadata.generate-rpm] sections of Cargo.toml list.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '== %s\n' "$*"; }

need_cargo_tool() { # subcommand crate
    if ! cargo "$1" --version >/dev/null 2>&1; then
        say "installing $2"
        cargo install --locked "$2"
    fi
}
need_cargo_tool deb cargo-deb
need_cargo_tool generate-rpm cargo-generate-rpm
# rpm itself is only for inspecting the result (check.sh); the build does not need it.
if ! command -v rpm >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
    say "installing rpm"
    apt-get install -y -qq rpm >/dev/null || { apt-get update -qq && apt-get install -y -qq rpm >/dev/null; }
fi

say "release build"
# Stripped here, once, so both packages carry the same small binary.
CARGO_PROFILE_RELEASE_STRIP=symbols cargo build --release --locked
bin=target/release/otpgate

say "staging target/assets"
assets=target/assets
rm -rf "$assets"
mkdir -p "$assets/man" "$assets/completions" "$assets/doc"
"$bin" manpages "$assets/man"
# Debian policy and RHEL both expect compressed man pages; -n keeps the output reproducible.
gzip -9n "$assets"/man/*.1
"$bin" completions bash >"$assets/completions/otpgate.bash"
"$bin" completions zsh >"$assets/completions/_otpgate"
"$bin" completions fish >"$assets/completions/otpgate.fish"
for f in README.md LICENSE-MIT LICENSE-APACHE; do
    if [ -f "$f" ]; then cp "$f" "$assets/doc/"; fi
done
cp systemd/README.md "$assets/doc/README.systemd.md"
# The rpm's sysusers.d file leaves out "m otpgate dialout": the rpm crate (like rpm >= 4.19)
# turns that line into "Requires: group(dialout)", which nothing provides on RHEL 9, so the
# package would not install there. %pre adds the membership instead, and the service gets
# dialout from the unit's SupplementaryGroups= either way.
grep -v '^m ' systemd/otpgate.sysusers >"$assets/sysusers-rpm.conf"

say "deb"
rm -rf target/debian target/generate-rpm
# The binary is already stripped; cargo-deb would otherwise strip it a second time.
cargo deb --no-build --no-strip
say "rpm"
# Library requirements from ldd, whatever rpm tooling the build host has.
cargo generate-rpm --auto-req builtin

ls -l target/debian/*.deb target/generate-rpm/*.rpm
