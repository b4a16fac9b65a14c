# otpgate %preun ($1 = 0 erase, 1 upgrade): on erase, stop (SIGTERM drains in-flight work;
# queued messages stay in /var/lib/otpgate) and disable. On upgrade, keep running.
if [ "$1" -eq 0 ]; then
    systemctl --no-reload disable --now otpgate.service >/dev/null 2>&1 || :
fi
exit 0
