# otpgate %pre: the user exists before the files unpack, so rpm can give the config its
# group (root:otpgate) directly. The same definition as /usr/lib/sysusers.d/otpgate.conf;
# this is what Fedora's %sysusers_create_compat does for rpm < 4.19.
if command -v systemd-sysusers >/dev/null 2>&1; then
    systemd-sysusers --replace=/usr/lib/sysusers.d/otpgate.conf - <<'SYSUSERS'
u otpgate - "otpgate OTP gateway" /var/lib/otpgate
m otpgate dialout
SYSUSERS
else
    getent group dialout >/dev/null || groupadd --system dialout
    getent group otpgate >/dev/null || groupadd --system otpgate
    if getent passwd otpgate >/dev/null; then
        usermod --append --groups dialout otpgate
    else
        useradd --system --gid otpgate --groups dialout --home-dir /var/lib/otpgate \
            --no-create-home --shell /sbin/nologin --comment "otpgate OTP gateway" otpgate
    fi
fi
exit 0
