# otpgate %postun ($1 = 0 erase, 1 upgrade). rpm has no purge: the outbox in /var/lib/otpgate,
# edited config (saved as .rpmsave), conf.d and the otpgate user stay, as on Fedora/RHEL
# generally. Remove them by hand if you mean to: rm -rf /etc/otpgate /var/lib/otpgate.
if [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || :
    if [ "$1" -ge 1 ]; then
        # Upgrade: restart only if it was running.
        systemctl try-restart otpgate.service >/dev/null 2>&1 || :
    fi
fi
command -v udevadm >/dev/null 2>&1 && udevadm control --reload >/dev/null 2>&1
exit 0
