# otpgate %post ($1 = 1 first install, 2 upgrade). Ownership is re-applied every time: the
# config is root:otpgate 0640, /etc/otpgate 0750, the outbox directory otpgate 0700.
chown root:otpgate /etc/otpgate /etc/otpgate/otpgate.toml
chmod 0750 /etc/otpgate
chmod 0640 /etc/otpgate/otpgate.toml
install -d -o root -g otpgate -m 0750 /etc/otpgate/conf.d
install -d -o otpgate -g otpgate -m 0700 /var/lib/otpgate
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
fi
if [ "$1" -eq 1 ]; then
    # Enabled for the next boot, not started: the default config has no clients or channels.
    systemctl enable otpgate.service >/dev/null 2>&1 || :
    echo "otpgate: edit /etc/otpgate/otpgate.toml, check it with 'otpgate check-config', then 'systemctl start otpgate'."
fi
command -v udevadm >/dev/null 2>&1 && udevadm control --reload >/dev/null 2>&1
exit 0
