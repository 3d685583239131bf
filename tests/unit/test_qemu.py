from __future__ import annotations

from pathlib import Path

import pytest

from appliance import qemu
from appliance.targets import local


def spec(tmp_path: Path, seed: bool = True, kernel: bool = False, contract: bool = False) -> qemu.VmSpec:
    return qemu.VmSpec(
        name="alpha",
        disk=tmp_path / "disk.qcow2",
        seed=tmp_path / "seed.iso" if seed else None,
        address="127.0.100.7",
        forwards=local.forwards(),
        accel="tcg",
        cpus=2,
        memory_mb=2048,
        qmp=tmp_path / "qmp.sock",
        serial_log=tmp_path / "serial.log",
        pidfile=tmp_path / "pid",
        kernel=tmp_path / "image.vmlinuz" if kernel else None,
        contract=contract,
    )


def test_every_forward_listens_on_the_appliance_address_only(tmp_path):
    args = qemu.argv(spec(tmp_path))
    netdev = args[args.index("-netdev") + 1]
    rules = [r for r in netdev.split(",") if r.startswith("hostfwd=")]
    assert rules
    assert all(r.split(":")[1] == "127.0.100.7" for r in rules)
    assert "hostfwd=tcp:127.0.100.7:2222-:22" in rules
    for port in (80, 443, 8448, 3478, 5349):
        assert f"hostfwd=tcp:127.0.100.7:{port}-:{port}" in rules
    for port in (3478, 49152, 49171):
        assert f"hostfwd=udp:127.0.100.7:{port}-:{port}" in rules
    assert "hostfwd=udp:127.0.100.7:5349-:5349" not in rules  # TURN over TLS is TCP only


def test_seed_is_an_ejectable_cdrom(tmp_path):
    args = " ".join(qemu.argv(spec(tmp_path)))
    assert "id=seed,media=cdrom,readonly=on" in args
    assert "ide-cd,drive=seed,id=seedcd" in args
    assert qemu.argv(spec(tmp_path, seed=False)).count("-drive") == 1


def test_tcg_uses_multithreaded_emulation():
    assert qemu.accel_args("tcg", 2)[:2] == ["-accel", "tcg,thread=multi,tb-size=512"]
    assert qemu.accel_args("kvm", 2)[:4] == ["-accel", "kvm", "-cpu", "host"]


def test_accel_probe_answer_is_kept_per_host_boot(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(qemu, "kvm_works", lambda kernel: calls.append(kernel) or False)
    assert qemu.choose_accel("auto", None, tmp_path) == "tcg"
    assert qemu.choose_accel("auto", None, tmp_path) == "tcg"
    assert len(calls) == 1
    assert qemu.choose_accel("tcg", None, tmp_path) == "tcg"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("QEMU emulator version 7.2.19 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022", (7, 2)),
        ("QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)\n", (10, 0)),
        ("something else entirely", (0, 0)),
    ],
)
def test_qemu_version_is_read_from_its_banner(text, expected):
    assert qemu.parse_version(text) == expected


def test_the_installed_qemu_shares_translations_between_processes():
    """scripts/install-deps brings qemu >= 8 (bookworm-backports on Debian 12): TCG launches rely on it."""
    assert qemu.version() >= qemu.FAST_TCG_SINCE, qemu.version()


def test_kvm_is_not_claimed_without_a_kernel_to_prove_it():
    assert qemu.kvm_works(None) is False


def test_direct_boot_puts_the_root_on_nvme_and_waits_for_the_seed(tmp_path):
    args = qemu.argv(spec(tmp_path, kernel=True))
    assert args[args.index("-kernel") + 1] == str(tmp_path / "image.vmlinuz")
    assert "nvme,drive=root,serial=outband-root" in args
    assert "-initrd" not in args  # the cloud kernel mounts its root itself
    cmdline = args[args.index("-append") + 1].split()
    assert "root=/dev/nvme0n1p1" in cmdline
    assert "ds=nocloud" in cmdline
    assert "panic=1" in cmdline  # a panicking boot restarts (qemu resets) instead of hanging
    # The image waits for the seed itself (wait-for-seed): no udev device unit is asked for.
    assert not [arg for arg in cmdline if arg.startswith("systemd.wants=")]
    # The kernel's security modules minus only the BPF LSM (PID 1 loads a program into it each boot).
    lsms = next(arg for arg in cmdline if arg.startswith("lsm=")).removeprefix("lsm=").split(",")
    assert "bpf" not in lsms
    assert {"apparmor", "yama", "landlock", "lockdown"} <= set(lsms)
    # Without a seed (cloud-init retired) nothing may wait for one.
    args = qemu.argv(spec(tmp_path, seed=False, kernel=True))
    assert "ds=nocloud" not in args[args.index("-append") + 1]


def test_only_a_launch_with_a_contract_is_flagged_for_synapses_early_start(tmp_path):
    def cmdline(**kw: bool) -> list[str]:
        args = qemu.argv(spec(tmp_path, kernel=True, **kw))
        return args[args.index("-append") + 1].split()

    assert qemu.CONTRACT_CMDLINE in cmdline(contract=True)
    assert qemu.CONTRACT_CMDLINE not in cmdline()  # a bare boot: a seed without a contract
    assert qemu.CONTRACT_CMDLINE not in cmdline(seed=False, contract=True)


def test_without_an_exported_kernel_the_image_boots_through_grub_on_virtio(tmp_path):
    args = qemu.argv(spec(tmp_path))
    assert "-kernel" not in args
    assert any(a.endswith(",if=virtio") for a in args)


def test_a_direct_boot_has_the_seed_and_nic_drivers_before_cloud_init_looks():
    """No initramfs: what cloud-init's local stage reads must not wait for udev's cold-plug. Without
    the NIC's driver it wrote no network config and the launch failed minutes later (a race)."""
    files = Path(__file__).parents[2] / "images/files"
    early = (files / "etc/modules-load.d/outband-early.conf").read_text().splitlines()
    assert {"ahci", "sr_mod", "isofs", "virtio_net"} <= set(early)
    dropin = (files / "etc/systemd/system/cloud-init-local.service.d/outband-seed.conf").read_text()
    assert "After=systemd-modules-load.service\n" in dropin
    assert "ExecStartPre=/bin/sh /usr/local/lib/outband/wait-for-seed\n" in dropin
    # The script waits only on a boot that names the NoCloud seed, which the launcher's does.
    script = (files / "usr/local/lib/outband/wait-for-seed").read_text()
    assert "grep -qw 'ds=nocloud' /proc/cmdline || exit 0" in script
    assert "ds=nocloud" in qemu.SEED_CMDLINE
