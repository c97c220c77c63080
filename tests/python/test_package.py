"""Installing on a fresh host (issue 14, item 6): the Debian package built by
`cargo deb` (its contents, its maintainer scripts, and — as root on a host
where stampede is not installed — a real `dpkg -i`, the unit's command line
started as the `stampede` user, and a purge) and scripts/install.sh for
hosts without dpkg, staged into a scratch root and started from there."""
from __future__ import annotations

import os
import pwd
import re
import shlex
import shutil
import signal
import stat
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from conftest import REPO, stampede_bin

TIMEOUT = 60
READY_RE = re.compile(r"^stampede ready http=(\S+):(\d+) stomp=(\S+)\s*$")
JWT_SECRET = "a-test-secret-of-at-least-32-bytes-0123456789"


def deb_path() -> Path:
    """The .deb scripts/test.sh built (STAMPEDE_DEB); without it the tests
    that need one skip, unless STAMPEDE_REQUIRE_DEB says they must run."""
    p = os.environ.get("STAMPEDE_DEB")
    if not p:
        debs = sorted((REPO / "target" / "debian").glob("stampede_*.deb"))
        if debs:
            return debs[-1]
        if os.environ.get("STAMPEDE_REQUIRE_DEB"):
            pytest.fail("STAMPEDE_DEB is not set and target/debian holds no package")
        pytest.skip("no .deb built (scripts/test.sh runs `cargo deb`)")
    return Path(p)


def unit_directives(text: str) -> dict:
    out: dict = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")) and "=" in line:
            k, v = line.split("=", 1)
            out.setdefault(k, []).append(v)
    return out


def start_unit_command(exec_start: str, env: dict, cwd: Path, user: str | None = None,
                       paths: dict | None = None):
    """Start the unit's ExecStart (with `paths` mapped, e.g. into a staged
    tree), as `user` if given; returns (process, http port)."""
    argv = shlex.split(exec_start)
    for old, new in (paths or {}).items():
        argv = [a.replace(old, new) if a.startswith(old) else a for a in argv]
    if user:
        # setpriv execs the command itself (runuser would sit between and
        # turn our SIGTERM into its own exit), keeping our file limit.
        argv = ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", *argv]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("STAMPEDE_")}
    full_env.update(env)
    p = subprocess.Popen(argv, cwd=str(cwd), env=full_env, stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    lines: list = []
    ready = threading.Event()

    def read():
        for raw in p.stdout:
            line = raw.decode(errors="replace").strip()
            lines.append(line)
            if READY_RE.match(line):
                ready.set()
        ready.set()

    threading.Thread(target=read, daemon=True).start()
    ready.wait(TIMEOUT)
    m = next((READY_RE.match(x) for x in lines if READY_RE.match(x)), None)
    if m is None:
        p.kill()
        err = p.stderr.read().decode(errors="replace")
        pytest.fail(f"{argv} did not get ready: {lines}\n{err[-3000:]}")
    return p, int(m.group(2))


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        assert p.wait(30) == 0, p.stderr.read().decode(errors="replace")[-3000:]
    finally:
        if p.poll() is None:
            p.kill()


def get(port: int, path: str) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status


# ---- scripts/install.sh


def install_sh(*args):
    return subprocess.run(["bash", str(REPO / "scripts" / "install.sh"), *map(str, args)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)


def test_install_sh_stages_a_host_and_the_unit_command_starts(tmp_path):
    root = tmp_path / "host"
    r = install_sh("--root", root, "--binary", stampede_bin())
    assert r.returncode == 0, r.stdout + r.stderr
    binary = root / "usr/local/bin/stampede"
    assert binary.stat().st_mode & 0o777 == 0o755
    conf = root / "etc/stampede/stampede.toml"
    assert conf.read_text() == (REPO / "tuning/stampede.toml").read_text()
    assert conf.stat().st_mode & 0o777 == 0o640
    assert (root / "var/lib/stampede").is_dir()
    for f in ("apply.sh", "check.sh", "sysctl.conf", "limits.conf", "nginx.conf", "README.md"):
        assert (root / "usr/local/share/stampede/tuning" / f).is_file(), f
    # It showed the tuning diff and changed nothing (no file under etc/sysctl.d).
    assert "net.core.somaxconn" in r.stdout and "nothing written" in r.stdout, r.stdout
    assert not (root / "etc/sysctl.d").exists()
    unit = (root / "etc/systemd/system/stampede.service").read_text()
    d = unit_directives(unit)
    assert d["ExecStart"] == ["/usr/local/bin/stampede --config /etc/stampede/stampede.toml"]
    assert d["ReadWritePaths"] == ["/var/lib/stampede"]

    # Again: idempotent, and a config the admin edited is kept.
    conf.write_text(conf.read_text() + "\n# edited by the admin\n")
    r = install_sh("--root", root, "--binary", stampede_bin())
    assert r.returncode == 0, r.stdout + r.stderr
    assert "kept yours" in r.stdout, r.stdout
    assert "# edited by the admin" in conf.read_text()
    assert (root / "etc/stampede/stampede.toml.new").read_text() == (REPO / "tuning/stampede.toml").read_text()

    # --apply-tuning (staged) installs the tuning files under the root only.
    if os.geteuid() == 0:
        r = install_sh("--root", root, "--binary", stampede_bin(), "--apply-tuning")
        assert r.returncode == 0, r.stdout + r.stderr
        assert (root / "etc/sysctl.d/60-stampede.conf").is_file()
        assert (root / "etc/security/limits.d/60-stampede.conf").is_file()

    # The unit's command line, from the staged tree, with the unit's
    # environment and what an admin puts in secrets.env.
    env = dict(e.split("=", 1) for e in d.get("Environment", []))
    env.update(STAMPEDE_JWT_SECRET=JWT_SECRET, STAMPEDE_LISTEN="127.0.0.1:0",
               STAMPEDE_DATA_DIR=str(root / "var/lib/stampede"))
    p, port = start_unit_command(d["ExecStart"][0], env, cwd=root / "var/lib/stampede",
                                 paths={"/usr/local/bin/": f"{root}/usr/local/bin/",
                                        "/etc/stampede/": f"{root}/etc/stampede/"})
    try:
        assert get(port, "/readyz") == 200
        assert (root / "var/lib/stampede/stampede.db").exists()
    finally:
        stop(p)


def test_install_sh_refuses_what_it_cannot_do(tmp_path):
    r = install_sh("--root", tmp_path / "h", "--binary", tmp_path / "missing")
    assert r.returncode == 2 and "not an executable" in r.stderr, r.stderr
    r = install_sh("--bogus")
    assert r.returncode == 2 and "unknown argument" in r.stderr


# ---- the Debian package


def deb_field(deb: Path, field: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), field], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_the_package_holds_what_a_host_needs(tmp_path):
    deb = deb_path()
    assert deb_field(deb, "Package") == "stampede"
    depends = deb_field(deb, "Depends")
    assert "libc6" in depends and "passwd" in depends, depends
    listing = subprocess.run(["dpkg-deb", "--contents", str(deb)], capture_output=True, text=True,
                             check=True).stdout
    for path in ("./usr/bin/stampede", "./usr/lib/systemd/system/stampede.service",
                 "./etc/stampede/stampede.toml", "./usr/share/stampede/tuning/sysctl.conf",
                 "./usr/share/stampede/tuning/limits.conf", "./usr/share/stampede/tuning/apply.sh",
                 "./usr/share/stampede/tuning/check.sh", "./usr/share/doc/stampede/DEPLOYMENT.md"):
        assert re.search(rf"\s{re.escape(path)}$", listing, re.M), path
    tree = tmp_path / "x"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(tree)], check=True)
    assert (tree / "DEBIAN/conffiles").read_text().split() == ["/etc/stampede/stampede.toml"]
    for script in ("postinst", "postrm"):
        text = (tree / "DEBIAN" / script).read_text()
        assert "#DEBHELPER#" not in text, f"{script}: the systemd snippet was not filled in"
    assert "useradd --system" in (tree / "DEBIAN/postinst").read_text()
    # The packaged binary is the one built here, stripped, and runs.
    v = subprocess.run([str(tree / "usr/bin/stampede"), "--version"], capture_output=True, text=True)
    assert v.returncode == 0 and v.stdout.startswith("stampede "), v
    unit = unit_directives((tree / "usr/lib/systemd/system/stampede.service").read_text())
    assert unit["ExecStart"][0].split()[0] == "/usr/bin/stampede"
    assert unit["User"] == ["stampede"]


def test_the_package_installs_runs_and_purges_for_real(tmp_path):
    """A real `dpkg -i` on this machine: only as root, and only where neither
    the package nor a `stampede` user exists (a CI machine), so that a
    developer's own installation is never touched."""
    deb = deb_path()
    if os.geteuid() != 0 or shutil.which("dpkg") is None:
        pytest.skip("needs root and dpkg")
    known = subprocess.run(["dpkg-query", "-W", "stampede"], capture_output=True).returncode == 0
    try:
        pwd.getpwnam("stampede")
        known = True
    except KeyError:
        pass
    if known or Path("/var/lib/stampede").exists():
        pytest.skip("stampede is installed on this machine already; not touching it")
    try:
        r = subprocess.run(["dpkg", "-i", str(deb)], capture_output=True, text=True, timeout=120,
                           env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        assert r.returncode == 0, r.stdout + r.stderr
        assert "apply.sh --apply" in r.stdout and "net.core.somaxconn" in r.stdout, r.stdout
        user = pwd.getpwnam("stampede")
        assert user.pw_dir == "/var/lib/stampede" and user.pw_shell.endswith("nologin")
        assert user.pw_uid < 1000, "a system user"
        data = Path("/var/lib/stampede").stat()
        assert (data.st_uid, stat.S_IMODE(data.st_mode)) == (user.pw_uid, 0o750)
        conf = Path("/etc/stampede/stampede.toml").stat()
        assert (conf.st_gid, stat.S_IMODE(conf.st_mode)) == (user.pw_gid, 0o640)
        assert not Path("/etc/sysctl.d/60-stampede.conf").exists(), "tuning is applied only on request"

        # The unit's command line, as the unit runs it: its user, its
        # working directory, its environment (plus what secrets.env holds).
        d = unit_directives(Path("/usr/lib/systemd/system/stampede.service").read_text())
        env = dict(e.split("=", 1) for e in d.get("Environment", []))
        env.update(STAMPEDE_JWT_SECRET=JWT_SECRET, STAMPEDE_LISTEN="127.0.0.1:0")
        p, port = start_unit_command(d["ExecStart"][0], env, cwd=Path(d["WorkingDirectory"][0]),
                                     user=d["User"][0])
        try:
            assert get(port, "/readyz") == 200
            db = Path("/var/lib/stampede/stampede.db")
            assert db.exists() and db.stat().st_uid == user.pw_uid
        finally:
            stop(p)

        r = subprocess.run(["dpkg", "--purge", "stampede"], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert not Path("/usr/bin/stampede").exists()
        assert not Path("/etc/stampede").exists()
        assert "chat history" in r.stdout and Path("/var/lib/stampede/stampede.db").exists()
    finally:
        subprocess.run(["dpkg", "--purge", "stampede"], capture_output=True, timeout=120)
        subprocess.run(["userdel", "stampede"], capture_output=True)
        subprocess.run(["groupdel", "stampede"], capture_output=True)
        shutil.rmtree("/var/lib/stampede", ignore_errors=True)
