#!/usr/bin/env bash
# Packaging checks (CI runs this after the tests): builds both packages, then asserts their
# contents, modes, ownership, conffile flags and maintainer scripts; verifies the unit and
# its sandbox score offline; and installs, removes and purges the .deb in a throwaway root.
# Nothing here touches the host system: no PID 1 systemd needed, no users created on "/".
set -euo pipefail
cd "$(dirname "$0")/.."

MAX_EXPOSURE=2.0   # systemd-analyze security: lower is better; fail above this
fails=0
passes=0
ok() { passes=$((passes + 1)); }
bad() { printf 'FAIL: %s\n' "$*" >&2; fails=$((fails + 1)); }
check() { # description, command...
    local what="$1"; shift
    if "$@" >/dev/null 2>&1; then ok; else bad "$what"; fi
}
has() { grep -qF -- "$2" <<<"$1"; }       # text, fixed string
has_re() { grep -qE -- "$2" <<<"$1"; }    # text, regex
say() { printf '== %s\n' "$*"; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

packaging/build.sh
deb="$(ls target/debian/otpgate_*.deb)"
rpmf="$(ls target/generate-rpm/otpgate-*.rpm)"

say "deb contents: $deb"
list="$(dpkg-deb -c "$deb")"
deb_file() { # mode path
    # dpkg-deb shows owners as names or as 0/0 depending on how the tar was written.
    if has_re "$list" "^$1 (root/root|0/0) +[0-9]+ [0-9-]+ [0-9:]+ \.$2\$"; then ok; else bad "deb: $1 root/root $2"; fi
}
deb_file -rwxr-xr-x /usr/bin/otpgate
deb_file -rw-r--r-- /lib/systemd/system/otpgate.service
deb_file -rw-r--r-- /usr/lib/sysusers.d/otpgate.conf
# Unpacked root:root (the group may not exist yet); postinst gives it to otpgate.
deb_file -rw-r----- /etc/otpgate/otpgate.toml
deb_file -rw-r----- /etc/otpgate/conf.d/README
deb_file -rw-r--r-- /lib/udev/rules.d/99-otpgate-modems.rules
deb_file -rw-r--r-- /usr/share/man/man1/otpgate.1.gz
deb_file -rw-r--r-- /usr/share/man/man1/otpgate-run.1.gz
deb_file -rw-r--r-- /usr/share/bash-completion/completions/otpgate
deb_file -rw-r--r-- /usr/share/zsh/vendor-completions/_otpgate
deb_file -rw-r--r-- /usr/share/fish/vendor_completions.d/otpgate.fish
deb_file -rw-r--r-- /usr/share/doc/otpgate/LICENSE-MIT
deb_file -rw-r--r-- /usr/share/doc/otpgate/LICENSE-APACHE
deb_file -rw-r--r-- /usr/share/doc/otpgate/README.systemd.md
deb_file -rw-r--r-- /usr/share/doc/otpgate/copyright
# Monitoring: the alert rules (with their promtool tests) and the Grafana dashboard.
deb_file -rw-r--r-- /usr/share/otpgate/prometheus/otpgate-rules.yml
deb_file -rw-r--r-- /usr/share/otpgate/prometheus/otpgate-rules.test.yml
deb_file -rw-r--r-- /usr/share/otpgate/grafana/otpgate.json

info="$(dpkg-deb -I "$deb")"
check "deb: Package: otpgate" has "$info" "Package: otpgate"
check "deb: Depends on libc6" has_re "$info" "Depends: .*libc6"
check "deb: has postinst, prerm, postrm" has_re "$info" "postinst.*" 
ctrl="$work/ctrl"
mkdir -p "$ctrl"
dpkg-deb --ctrl-tarfile "$deb" | tar -x -C "$ctrl"
check "deb: otpgate.toml is a conffile" grep -qx /etc/otpgate/otpgate.toml "$ctrl/conffiles"
for s in postinst prerm postrm; do
    check "deb: $s is executable" test -x "$ctrl/$s"
    check "deb: $s is valid sh" sh -n "$ctrl/$s"
done
postinst="$(cat "$ctrl/postinst")"
for want in 'systemd-sysusers' 'useradd $prefix --system' 'chmod 0640 "$ROOT/etc/otpgate/otpgate.toml"' \
    'chmod 0750 "$ROOT/etc/otpgate"' '-m 0700 "$ROOT/var/lib/otpgate"' '[ -d /run/systemd/system ]' \
    'systemctl daemon-reload' 'enable otpgate.service' 'systemctl try-restart otpgate.service' \
    'udevadm control --reload'; do
    check "deb postinst: $want" has "$postinst" "$want"
done
# A systemctl command line (not the hint printed for the admin) that would start it.
if has_re "$postinst" '^[[:space:]]*systemctl( --[^ ]+)* (start|restart|reload-or-restart) '; then bad "deb postinst must not start the service"; else ok; fi
check "deb prerm: stops on remove" has "$(cat "$ctrl/prerm")" 'systemctl stop otpgate.service'
postrm="$(cat "$ctrl/postrm")"
check "deb postrm: purge deletes config and state" has "$postrm" 'rm -rf "$ROOT/etc/otpgate" "$ROOT/var/lib/otpgate"'

say "rpm contents: $rpmf"
rl="$(rpm -qp --qf '[%{FILEMODES:perms} %{FILEUSERNAME} %{FILEGROUPNAME} %{FILEFLAGS:fflags} %{FILENAMES}\n]' "$rpmf")"
rpm_file() { # mode user group flags path
    if grep -qxF -- "$1 $2 $3 $4 $5" <<<"$rl"; then ok; else bad "rpm: $*"; fi
}
rpm_file -rwxr-xr-x root root '' /usr/bin/otpgate
rpm_file -rw-r--r-- root root '' /usr/lib/systemd/system/otpgate.service
rpm_file -rw-r--r-- root root '' /usr/lib/sysusers.d/otpgate.conf
rpm_file -rw-r----- root otpgate cn /etc/otpgate/otpgate.toml
rpm_file -rw-r----- root otpgate cn /etc/otpgate/conf.d/README
rpm_file -rw-r--r-- root root '' /usr/lib/udev/rules.d/99-otpgate-modems.rules
rpm_file -rw-r--r-- root root d /usr/share/man/man1/otpgate.1.gz
rpm_file -rw-r--r-- root root '' /usr/share/bash-completion/completions/otpgate
rpm_file -rw-r--r-- root root '' /usr/share/zsh/site-functions/_otpgate
rpm_file -rw-r--r-- root root '' /usr/share/fish/vendor_completions.d/otpgate.fish
rpm_file -rw-r--r-- root root d /usr/share/doc/otpgate/LICENSE-MIT
rpm_file -rw-r--r-- root root d /usr/share/doc/otpgate/LICENSE-APACHE
rpm_file -rw-r--r-- root root '' /usr/share/otpgate/prometheus/otpgate-rules.yml
rpm_file -rw-r--r-- root root '' /usr/share/otpgate/prometheus/otpgate-rules.test.yml
rpm_file -rw-r--r-- root root '' /usr/share/otpgate/grafana/otpgate.json
# Unpacked (scriptlets need /bin/sh inside the root, so they are only asserted as text) into
# a throwaway rpm root where the otpgate group exists, as %pre would have made it.
RR="$work/rpmroot"
mkdir -p "$RR/etc"
printf 'root:x:0:0:root:/root:/bin/bash\notpgate:x:990:990::/var/lib/otpgate:/sbin/nologin\n' >"$RR/etc/passwd"
printf 'root:x:0:\ndialout:x:18:otpgate\notpgate:x:990:\n' >"$RR/etc/group"
if rpm --root "$RR" --initdb && rpm --root "$RR" --noscripts --nodeps -i "$rpmf" >"$work/rpm.log" 2>&1; then ok; else bad "rpm -i: $(cat "$work/rpm.log")"; fi
check "rpm root: config 640 root:otpgate" test "$(stat -c '%a %u %g' "$RR/etc/otpgate/otpgate.toml")" = "640 0 990"
check "rpm root: sysusers.d creates the user" grep -q '^u otpgate ' "$RR/usr/lib/sysusers.d/otpgate.conf"
check "rpm root: binary runs" "$RR/usr/bin/otpgate" --version
# The installed rules pass promtool where they land (the test file names them beside it).
if command -v promtool >/dev/null; then
    check "rpm root: installed alert rules pass their tests" \
        sh -c "cd '$RR/usr/share/otpgate/prometheus' && promtool test rules otpgate-rules.test.yml"
fi
check "rpm root: installed dashboard is the repository's" cmp "$RR/usr/share/otpgate/grafana/otpgate.json" packaging/grafana/otpgate.json
check "rpm -e" rpm --root "$RR" --noscripts -e otpgate
check "rpm -e: binary gone" test ! -e "$RR/usr/bin/otpgate"
check "rpm: --dump lists the config" has "$(rpm -qp --dump "$rpmf")" "/etc/otpgate/otpgate.toml"
reqs="$(rpm -qp --requires "$rpmf")"
check "rpm: requires libc" has_re "$reqs" '^libc\.so\.6'
# user()/group() requirements break installs on RHEL 9, where nothing provides them.
if has_re "$reqs" '^(user|group|groupmember)\('; then bad "rpm: sysusers requirements: $reqs"; else ok; fi
scripts="$(rpm -qp --scripts "$rpmf")"
for want in 'preinstall scriptlet' 'systemd-sysusers --replace=/usr/lib/sysusers.d/otpgate.conf' \
    'useradd --system' 'usermod --append --groups dialout otpgate' 'm otpgate dialout' 'chmod 0640 /etc/otpgate/otpgate.toml' 'chmod 0750 /etc/otpgate' \
    'install -d -o otpgate -g otpgate -m 0700 /var/lib/otpgate' 'systemctl enable otpgate.service' \
    'disable --now otpgate.service' 'try-restart otpgate.service' 'udevadm control --reload'; do
    check "rpm scripts: $want" has "$scripts" "$want"
done

say "systemd-analyze"
# verify needs the ExecStart binary and the units the service orders itself against; an
# offline root with the host's unit files and the packaged binary provides both.
vroot="$work/verify"
mkdir -p "$vroot/usr/bin" "$vroot/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$vroot/usr/lib/systemd/"
cp target/release/otpgate "$vroot/usr/bin/otpgate"
cp systemd/otpgate.service "$vroot/usr/lib/systemd/system/"
# --man=no: man(1) does not look inside --root. verify exits 0 on unknown keys, so any output fails.
vout="$(systemd-analyze verify --man=no --root="$vroot" otpgate.service 2>&1)" || bad "verify: exit code"
if [ -z "$vout" ]; then ok; else bad "systemd-analyze verify: $vout"; fi
score_line="$(systemd-analyze security --offline=yes systemd/otpgate.service 2>/dev/null | grep 'Overall exposure level')"
score="$(grep -oE '[0-9]+\.[0-9]+' <<<"$score_line" | head -n1)"
if awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s != "" && s <= m) }'; then ok; else bad "exposure $score > $MAX_EXPOSURE"; fi

say "install, reinstall, remove, purge in a throwaway root (dpkg --root)"
# dpkg --root with --force-script-chrootless runs the maintainer scripts on the host with
# DPKG_ROOT=<root>; they prefix every path with it and pass --root/--prefix to
# systemd-sysusers/useradd/systemctl, so the host is untouched and no chroot (no /bin/sh
# inside the root, no debootstrap) is needed.
R="$work/root"
new_root() { # dir: an empty Debian-like root with base-passwd's root and dialout
    mkdir -p "$1/var/lib/dpkg/info" "$1/var/lib/dpkg/updates" "$1/etc"
    : >"$1/var/lib/dpkg/status"
    : >"$1/var/lib/dpkg/available"
    printf 'root:x:0:0:root:/root:/bin/bash\n' >"$1/etc/passwd"
    printf 'root:x:0:\ndialout:x:20:\n' >"$1/etc/group"
    printf 'root:*:19000:0:99999:7:::\n' >"$1/etc/shadow"
    printf 'root:*::\ndialout:*::\n' >"$1/etc/gshadow"
}
new_root "$R"
dpkg_r() { dpkg --root="$R" --force-script-chrootless --force-depends --log=/dev/null "$@"; }
assert_installed_state() { # root label
    local r="$1" l="$2" uid gid
    uid="$(awk -F: '$1=="otpgate"{print $3}' "$r/etc/passwd")"
    gid="$(awk -F: '$1=="otpgate"{print $3}' "$r/etc/group")"
    check "$l: user otpgate exists" test -n "$uid"
    check "$l: exactly one otpgate user" test "$(grep -c '^otpgate:' "$r/etc/passwd")" = 1
    check "$l: home /var/lib/otpgate" grep -q '^otpgate:[^:]*:[0-9]*:[0-9]*:[^:]*:/var/lib/otpgate:' "$r/etc/passwd"
    check "$l: otpgate in dialout" grep -qE '^dialout:[^:]*:20:(.*,)?otpgate(,|$)' "$r/etc/group"
    check "$l: /etc/otpgate 750 root:otpgate" test "$(stat -c '%a %u %g' "$r/etc/otpgate")" = "750 0 $gid"
    check "$l: otpgate.toml 640 root:otpgate" test "$(stat -c '%a %u %g' "$r/etc/otpgate/otpgate.toml")" = "640 0 $gid"
    check "$l: conf.d 750 root:otpgate" test "$(stat -c '%a %u %g' "$r/etc/otpgate/conf.d")" = "750 0 $gid"
    check "$l: /var/lib/otpgate 700 otpgate:otpgate" test "$(stat -c '%a %u %g' "$r/var/lib/otpgate")" = "700 $uid $gid"
}
if dpkg_r -i "$deb" >"$work/install.log" 2>&1; then ok; else bad "dpkg -i: $(cat "$work/install.log")"; fi
assert_installed_state "$R" "install (sysusers)"
check "install: status installed" grep -q 'Status: install ok installed' "$R/var/lib/dpkg/status"
check "install: binary" test -x "$R/usr/bin/otpgate"
check "install: enabled (not started)" test -L "$R/etc/systemd/system/multi-user.target.wants/otpgate.service"
check "install: packaged config passes check-config" "$R/usr/bin/otpgate" check-config --config "$R/etc/otpgate/otpgate.toml"
# An admin's edits, a drop-in and queued messages, then the same package again (upgrade path).
echo '# site edit' >>"$R/etc/otpgate/otpgate.toml"
echo '[log]' >"$R/etc/otpgate/conf.d/site.toml"
echo 'queued' >"$R/var/lib/otpgate/otpgate.db"
if dpkg_r -i "$deb" >"$work/reinstall.log" 2>&1; then ok; else bad "dpkg -i again: $(cat "$work/reinstall.log")"; fi
assert_installed_state "$R" "reinstall"
check "reinstall: admin's edit kept" grep -q '# site edit' "$R/etc/otpgate/otpgate.toml"
if dpkg_r --remove otpgate >"$work/remove.log" 2>&1; then ok; else bad "dpkg --remove: $(cat "$work/remove.log")"; fi
check "remove: binary gone" test ! -e "$R/usr/bin/otpgate"
check "remove: unit gone" test ! -e "$R/lib/systemd/system/otpgate.service"
check "remove: config kept" grep -q '# site edit' "$R/etc/otpgate/otpgate.toml"
check "remove: drop-in kept" test -f "$R/etc/otpgate/conf.d/site.toml"
check "remove: outbox kept" test -f "$R/var/lib/otpgate/otpgate.db"
check "remove: user kept" grep -q '^otpgate:' "$R/etc/passwd"
if dpkg_r --purge otpgate >"$work/purge.log" 2>&1; then ok; else bad "dpkg --purge: $(cat "$work/purge.log")"; fi
check "purge: /etc/otpgate gone" test ! -e "$R/etc/otpgate"
check "purge: /var/lib/otpgate gone" test ! -e "$R/var/lib/otpgate"
check "purge: enablement gone" test ! -e "$R/etc/systemd/system/multi-user.target.wants/otpgate.service"
check "purge: package forgotten" test -z "$(grep '^Package: otpgate$' "$R/var/lib/dpkg/status")"
check "purge: user kept (by design)" grep -q '^otpgate:' "$R/etc/passwd"

say "postinst without systemd-sysusers (containers, minimal chroots)"
# The useradd fallback: the package unpacked into a second root, postinst run with a PATH
# that has the shadow tools but no systemd-sysusers and no systemctl.
R2="$work/root2"
new_root "$R2"
dpkg-deb -x "$deb" "$R2"
shim="$work/bin"
mkdir -p "$shim"
for t in sh awk install chown chmod useradd groupadd usermod cat grep rm; do
    ln -s "$(command -v "$t")" "$shim/$t"
done
if DPKG_ROOT="$R2" PATH="$shim" sh "$ctrl/postinst" configure "" >"$work/fallback.log" 2>&1; then ok; else bad "fallback postinst: $(cat "$work/fallback.log")"; fi
assert_installed_state "$R2" "fallback"
if DPKG_ROOT="$R2" PATH="$shim" sh "$ctrl/postinst" configure 0.1.0-1 >>"$work/fallback.log" 2>&1; then ok; else bad "fallback postinst again: $(cat "$work/fallback.log")"; fi
assert_installed_state "$R2" "fallback again"

echo
echo "packages: $deb $rpmf"
echo "security: ${score_line:-none}"
echo "checks: $passes passed, $fails failed"
[ "$fails" -eq 0 ]
