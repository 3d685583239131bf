#!/bin/sh
# inputs: -
# Hardening that is not a file drop: accounts, permissions, and proof that no compiler is left.
set -eu
# No password for anyone: SSH keys only, sudo for the operator user made by cloud-init.
usermod -p '*' root
# login.defs (lynis AUTH-9230, AUTH-9286, AUTH-9328): a session's new files private to its group
# (pam_umask reads UMASK; Debian 13's file has no such line). Nobody has a password here (keys
# only), but should one be set it gets hashing rounds and an age.
login_def() {
  if grep -q "^$1[[:space:]]" /etc/login.defs; then
    sed -i "s/^$1[[:space:]].*/$1\t$2/" /etc/login.defs
  else
    printf '%s\t%s\n' "$1" "$2" >> /etc/login.defs
  fi
}
login_def UMASK 027
login_def PASS_MAX_DAYS 365
login_def PASS_MIN_DAYS 1
login_def SHA_CRYPT_MIN_ROUNDS 5000
login_def SHA_CRYPT_MAX_ROUNDS 500000
# Lynis FILE-7524, HOME-9304: configs that say how the system is entered or run at times readable
# by root only, and PostgreSQL's home (its data) closed to others.
chmod 0600 /etc/ssh/sshd_config
for d in /etc/cron.d /etc/cron.daily /etc/cron.weekly /etc/cron.monthly /etc/cron.hourly; do
  if [ -d "$d" ]; then chmod 0700 "$d"; fi
done
# A cloud's stock image brings its own grub.cfg (the local target's is written 0600 by appliance/disk.py).
if [ -f /boot/grub/grub.cfg ]; then chmod 0600 /boot/grub/grub.cfg; fi
chmod 0750 /var/lib/postgresql
# sshd: host key is injected per launch, ed25519 only.
for f in /etc/ssh/sshd_config.d/*.conf; do chmod 0644 "$f"; done
# Boot units an appliance does not need. Each costs seconds under emulation; sshd-keygen would
# also make RSA/ECDSA host keys nobody pins (the ed25519 key is injected per launch).
# --no-reload: on a live build VM (Packer) each reload re-runs every generator, seconds apiece.
for unit in sshd-keygen.service grub-common.service e2scrub_reap.service systemd-binfmt.service; do
  systemctl mask --no-reload "$unit" >/dev/null 2>&1 || true
done
# Kernel debug and tracing file systems (also less to see for an intruder), FUSE, configfs, huge
# pages, EFI pstore and DRM: nothing on the appliance uses them.
for unit in sys-kernel-debug.mount sys-kernel-tracing.mount sys-fs-fuse-connections.mount \
  sys-kernel-config.mount dev-hugepages.mount systemd-pstore.service modprobe@drm.service \
  modprobe@efi_pstore.service modprobe@fuse.service modprobe@configfs.service; do
  systemctl mask --no-reload "$unit" >/dev/null 2>&1 || true
done
# systemd-ssh-generator offers sshd on AF_VSOCK and a local AF_UNIX socket: not ways in this
# appliance offers, and its VSOCK probe loads five modules (and fails) at every boot.
# Likewise the generators for what this appliance has none of: GPT partition auto-discovery (the
# root is named on the kernel command line and in fstab), hibernation, a TPM, offline updates,
# /etc/rc.local, `systemd.run=` and SysV init scripts (every service here has a unit), and the
# kernel command line's debugging switches (systemd.wants=, systemd.mask=, systemd.debug_shell).
# PID 1 waits for all generators before it starts anything; each is a process of ~0.1 s CPU under
# emulation. Kept: fstab, getty, cloud-init, postgresql.
mkdir -p /etc/systemd/system-generators
for gen in systemd-ssh-generator systemd-gpt-auto-generator systemd-hibernate-resume-generator \
  systemd-tpm2-generator systemd-system-update-generator systemd-rc-local-generator systemd-run-generator \
  systemd-sysv-generator systemd-debug-generator; do
  ln -sf /dev/null "/etc/systemd/system-generators/$gen"
done
systemctl daemon-reload >/dev/null 2>&1 || true  # a live build VM; nothing to reload in a chroot
# Compilers must not be in an appliance (nothing here needs one at run time).
for pkg in gcc cpp g++ make build-essential libc6-dev python3-dev; do
  if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
    echo "compiler package $pkg is installed" >&2; exit 1
  fi
done
