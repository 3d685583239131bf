#!/bin/sh
# inputs: -
# Hardening that is not a file drop: accounts, permissions, and proof that no compiler is left.
set -eu
# No password for anyone: SSH keys only, sudo for the operator user made by cloud-init.
usermod -p '*' root
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
