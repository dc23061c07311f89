"""Packaging: the wheel built from the working tree installs and is found by napari.

These tests do what a user's napari does with a released plugin. They build a wheel from
a snapshot of the working tree, ``pip install`` it into a fresh virtual environment (as
napari's plugin manager does), then check in that environment's interpreter that:

* ``napari_unet`` is imported from the environment, not from the developer's editable
  checkout (which stays visible through the system site-packages);
* the npe2 manifest ships inside the installed package and matches the source manifest;
* npe2 discovers the plugin, and every widget and sample-data command resolves.

The widget and sample-data contributions expected are read from the source manifest, so
the tests keep pace as the manifest grows.

The virtual environment sees the system site-packages, so napari, torch and the other
dependencies come from there instead of being downloaded. Nothing is written into the
repository: the wheel is built from a copy of the tree under ``tmp_path``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "napari_unet"
DISTRIBUTION = "napari-unet-loop"

#: Generous limits per step: the whole module takes well under a minute, but a slow
#: registry during an isolated build must fail the test, not hang the suite.
BUILD_TIMEOUT_S = 300
STEP_TIMEOUT_S = 180

#: Environment variables that would make a subprocess import or install from somewhere other
#: than the fresh environment (a ``PYTHONPATH`` pointing at ``src`` would hide the very
#: shadowing these tests look for; ``PIP_USER``, ``PIP_TARGET`` or ``PIP_PREFIX`` would send
#: the install out of it).
_LEAKY_VARIABLES = ("PYTHONPATH", "PYTHONHOME", "PYTHONSAFEPATH", "PIP_USER", "PIP_TARGET", "PIP_PREFIX")

#: Runs in the fresh environment's interpreter and prints what it found, as JSON, on its last
#: line. It records failures instead of raising, so that the tests report them all at once.
_CHECK_SCRIPT = textwrap.dedent(
    """
    import importlib
    import importlib.metadata
    import json
    import sys
    import traceback
    from pathlib import Path

    report = {"sys_path": list(sys.path)}

    import napari_unet

    package_dir = Path(napari_unet.__file__).resolve().parent
    report["package_file"] = str(Path(napari_unet.__file__).resolve())
    report["version"] = napari_unet.__version__
    manifest_file = package_dir / "napari.yaml"
    report["manifest_text"] = manifest_file.read_text() if manifest_file.is_file() else None

    # The first distribution on sys.path is the one importlib.metadata (and so npe2) uses.
    dist = importlib.metadata.distribution("napari-unet-loop")
    report["dist_version"] = dist.version
    report["dist_files"] = [str(f) for f in dist.files or ()]
    report["dist_location"] = str(Path(dist.locate_file("")).resolve())
    report["direct_url"] = json.loads(dist.read_text("direct_url.json") or "null")
    report["manifest_entry_points"] = [
        ep.value for ep in dist.entry_points if ep.group == "napari.manifest"
    ]

    report["npe2"] = report["npe2_error"] = None
    report["resolved"] = {}
    try:
        from npe2 import PluginManager

        pm = PluginManager.instance()
        pm.discover()
        manifest = pm.get_manifest("napari-unet-loop")
    except Exception:
        # Reported by the npe2 test; the other checks above still stand.
        report["npe2_error"] = traceback.format_exc()
        manifest = None

    if manifest is not None:
        contributions = manifest.contributions
        report["npe2"] = {
            "name": manifest.name,
            "version": manifest.package_metadata.version if manifest.package_metadata else None,
            "commands": {c.id: c.python_name for c in contributions.commands or ()},
            "widgets": [
                {"command": w.command, "display_name": w.display_name} for w in contributions.widgets or ()
            ],
            "sample_data": [
                {"key": s.key, "command": getattr(s, "command", None)} for s in contributions.sample_data or ()
            ],
        }

        # Import every command's python_name, as napari does when a user opens the widget
        # or sample: a module missing from the wheel only shows up here.
        for command_id, python_name in report["npe2"]["commands"].items():
            try:
                module_name, _, attribute = (python_name or "").partition(":")
                module = importlib.import_module(module_name)
                target = getattr(module, attribute)
                report["resolved"][command_id] = {
                    "callable": callable(target),
                    "module_file": str(Path(module.__file__).resolve()),
                    "error": None,
                }
            except Exception:
                report["resolved"][command_id] = {
                    "callable": False, "module_file": None, "error": traceback.format_exc()
                }

    print(json.dumps(report))
    """
)


def _clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LEAKY_VARIABLES}
    # Widget modules import Qt; without a display (plain CI, no xvfb) Qt must not need one.
    env.setdefault("QT_QPA_PLATFORM", "offscreen")
    return env


def _run(args: list[str], *, cwd: Path, timeout: float = STEP_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], cwd=cwd, env=_clean_env(), capture_output=True, text=True, timeout=timeout
    )


def _output(result: subprocess.CompletedProcess[str]) -> str:
    return f"exit status {result.returncode}\n--- stdout ---\n{result.stdout}\n--- stderr ---\n{result.stderr}"


def _is_relative_to(path: str | Path, parent: str | Path) -> bool:
    return Path(path).resolve().is_relative_to(Path(parent).resolve())


def _snapshot_tree(destination: Path) -> Path:
    """Copies what a wheel build reads from the working tree into ``destination``.

    That is every file at the project root (``pyproject.toml``, ``README.md`` and any
    setup or licence file added later) and the whole ``src`` tree, untracked files
    included: a module someone has just added and listed in the manifest must be in the
    wheel. Build output, caches and the editable install's ``*.egg-info`` stay behind, so
    the wheel cannot pick up stale metadata, and the build writes its own ``build/`` and
    ``*.egg-info`` into the copy instead of the repository.

    Args:
        destination: Folder to create; must not exist.

    Returns:
        ``destination``.
    """
    destination.mkdir()
    for entry in ROOT.iterdir():
        if entry.is_file():
            shutil.copy2(entry, destination / entry.name)
    shutil.copytree(
        ROOT / "src",
        destination / "src",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build", "dist"),
    )
    return destination


def _build_wheel(source: Path, outdir: Path) -> Path:
    """Builds the wheel of ``source`` into ``outdir``, in an isolated environment if it can.

    An isolated build is what pip and a release use, and it works on any machine that
    reaches a package index (``pip install -e .`` builds in one too, so the system
    interpreter often lacks ``wheel`` or a recent enough setuptools). Offline, the build
    falls back to the current interpreter's setuptools, provided it meets
    ``[build-system] requires`` (``build`` checks that before building).

    Args:
        source: Project folder holding ``pyproject.toml``.
        outdir: Folder for the wheel.

    Returns:
        The path of the one wheel built.
    """
    attempts = []
    for extra in ([], ["--no-isolation"]):
        result = _run(
            [sys.executable, "-m", "build", "--wheel", *extra, "--outdir", outdir, source],
            cwd=source,
            timeout=BUILD_TIMEOUT_S,
        )
        if result.returncode == 0:
            wheels = sorted(outdir.glob("*.whl"))
            assert len(wheels) == 1, f"expected one wheel, found {wheels}"
            return wheels[0]
        attempts.append(f"python -m build --wheel {' '.join(extra)}\n{_output(result)}")
    pytest.fail("the wheel could not be built:\n\n" + "\n\n".join(attempts))


def _venv_python(env_dir: Path) -> Path:
    scripts = "Scripts" if sys.platform == "win32" else "bin"
    return env_dir / scripts / ("python.exe" if sys.platform == "win32" else "python")


def _venv_purelib(python: Path) -> Path:
    output = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        capture_output=True,
        text=True,
        check=True,
        env=_clean_env(),
    ).stdout
    return Path(output.strip())


def _create_venv(env_dir: Path) -> Path:
    """Creates a virtual environment that sees the packages of the running interpreter.

    It is made ``--system-site-packages`` and, first, without its own pip: the running
    interpreter's pip is then imported from the system site-packages and installs into the
    new environment. A pip bundled by ``ensurepip`` would bring the setuptools 65 of Python
    3.11, which would shadow the system's and make pip download a newer one for torch's
    ``setuptools>=77`` requirement, a network access the test does not need. Where the
    system has no pip to share, the environment gets its own.

    When the tests themselves run in a virtual environment (tox, a ``.venv``), the new
    environment's "system" site-packages are the base interpreter's, which lack napari
    and torch; a ``.pth`` file then adds the running environment's site-packages behind
    the new environment's own, as nested environments would be.

    Args:
        env_dir: Folder to create.

    Returns:
        The new environment's python.

    Raises:
        pytest.skip.Exception: When no virtual environment can be created here.
    """
    python = _venv_python(env_dir)
    errors = []
    for with_pip in (False, True):
        options = ["--system-site-packages", "--clear"] + ([] if with_pip else ["--without-pip"])
        created = _run([sys.executable, "-m", "venv", *options, env_dir], cwd=env_dir.parent)
        if created.returncode != 0:  # e.g. a Debian python without python3-venv
            errors.append(f"venv {' '.join(options)}: {_output(created)}")
            continue
        if sys.prefix != sys.base_prefix:
            outer = [p for p in sysconfig.get_paths().values() if p.endswith("site-packages")]
            outer = sorted(set(outer), key=outer.index)
            lines = [f"import site; site.addsitedir({p!r})" for p in outer]
            (_venv_purelib(python) / "_outer_environment.pth").write_text("\n".join(lines) + "\n")
        check = _run([python, "-m", "pip", "--version"], cwd=env_dir)
        if check.returncode == 0:
            return python
        errors.append(f"venv {' '.join(options)}: no usable pip\n{_output(check)}")
    pytest.skip("cannot create a virtual environment with pip here:\n" + "\n".join(errors))


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A snapshot of the working tree: the build and the expectations read the same files.

    Others may edit the manifest while the tests run; comparing the wheel with the live
    file could then fail for no packaging fault.
    """
    return _snapshot_tree(tmp_path_factory.mktemp("install") / "source")


@pytest.fixture(scope="module")
def source_manifest(source) -> dict:
    return yaml.safe_load((source / "src" / PACKAGE / "napari.yaml").read_text())


@pytest.fixture(scope="module")
def wheel(source) -> Path:
    return _build_wheel(source, source.parent / "dist")


@pytest.fixture(scope="module")
def installed(wheel, source) -> dict:
    """Installs ``wheel`` into a fresh environment and reports what its python sees there.

    Returns:
        The check script's report, plus ``purelib`` (the environment's site-packages).
    """
    work = source.parent
    python = _create_venv(work / "venv")
    purelib = _venv_purelib(python)

    # Exactly what napari's plugin manager runs: a plain pip install with the environment's
    # interpreter. The dependencies are already satisfied from the system site-packages.
    # pip sees the editable napari-unet there too, but never uninstalls outside the active
    # environment ("Not uninstalling ... outside environment"), so the developer's install
    # is left alone.
    install = _run([python, "-m", "pip", "install", "--disable-pip-version-check", wheel], cwd=work)
    assert install.returncode == 0, f"pip install of the wheel failed\n{_output(install)}"

    # Run from a folder of its own: ``python script.py`` puts the script's folder first on
    # sys.path, and that folder must not hold a napari_unet of its own.
    script = work / "check" / "check_installed.py"
    script.parent.mkdir()
    script.write_text(_CHECK_SCRIPT)
    result = _run([python, script], cwd=script.parent)
    assert result.returncode == 0, f"the check script failed in the fresh environment\n{_output(result)}"
    report = json.loads(result.stdout.strip().splitlines()[-1])
    report["purelib"] = str(purelib.resolve())
    return report


def test_wheel_ships_the_manifest_and_every_module(wheel, source):
    package_dir = source / "src" / PACKAGE
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert f"{PACKAGE}/napari.yaml" in names, "napari.yaml is missing from the wheel (package-data)"
        assert archive.read(f"{PACKAGE}/napari.yaml") == (package_dir / "napari.yaml").read_bytes()

        # A subpackage without an __init__.py or left out of packages.find would be
        # dropped silently; its modules would then fail to import only for users.
        modules = {
            f"{PACKAGE}/{p.relative_to(package_dir).as_posix()}"
            for p in package_dir.rglob("*.py")
            if "__pycache__" not in p.parts
        }
        assert not modules - names, f"modules missing from the wheel: {sorted(modules - names)}"

        # npe2 finds the plugin only through this entry point.
        entry_points = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        assert len(entry_points) == 1, names
        text = archive.read(entry_points[0]).decode()
    assert "[napari.manifest]" in text
    assert f"{DISTRIBUTION} = {PACKAGE}:napari.yaml" in text


def test_installed_package_is_imported_from_the_environment(installed):
    # The editable install's path (a .pth file in the system site-packages) is on sys.path
    # too, but site.py puts the environment's own site-packages before the system's and
    # appends .pth entries after the folder that holds them, so the wheel's copy wins. If
    # this fails, something put the source tree first (PYTHONPATH, an old-style
    # easy-install.pth that moves entries to the front, or a meta-path finder inserted at
    # the front) and the tests below would be checking the source tree, not the wheel.
    purelib = installed["purelib"]
    package_file = installed["package_file"]
    assert _is_relative_to(package_file, purelib), (
        f"napari_unet was imported from {package_file}, not from the fresh environment's "
        f"{purelib}; sys.path there is:\n" + "\n".join(installed["sys_path"])
    )
    assert not _is_relative_to(package_file, ROOT)
    sys_path = [str(Path(p).resolve()) if p else p for p in installed["sys_path"]]
    editable = str((ROOT / "src").resolve())
    if editable in sys_path:  # documents why the check above holds
        assert sys_path.index(purelib) < sys_path.index(editable)

    # importlib.metadata, and so npe2, must see the wheel's metadata first, not the
    # editable install's.
    assert _is_relative_to(installed["dist_location"], purelib)
    assert not (installed["direct_url"] or {}).get("dir_info", {}).get("editable", False)
    assert installed["dist_version"] == installed["version"]
    assert f"{PACKAGE}:napari.yaml" in installed["manifest_entry_points"]


def test_installed_package_holds_the_source_manifest(installed, source):
    assert installed["manifest_text"] is not None, "napari.yaml is not inside the installed package"
    assert f"{PACKAGE}/napari.yaml" in installed["dist_files"], "napari.yaml is not in the wheel's RECORD"
    source_text = (source / "src" / PACKAGE / "napari.yaml").read_text()
    assert installed["manifest_text"] == source_text
    assert yaml.safe_load(installed["manifest_text"]) == yaml.safe_load(source_text)


def test_npe2_discovers_the_plugin_and_its_contributions(installed, source_manifest):
    found = installed["npe2"]
    assert found is not None, f"npe2 does not find the installed plugin:\n{installed['npe2_error']}"
    assert found["name"] == source_manifest["name"] == DISTRIBUTION
    assert found["version"] == installed["version"]

    contributions = source_manifest.get("contributions") or {}
    expected_commands = {c["id"]: c["python_name"] for c in contributions.get("commands") or ()}
    assert found["commands"] == expected_commands

    # Whatever widgets the source manifest lists, napari must list the same ones.
    expected_widgets = [
        {"command": w["command"], "display_name": w.get("display_name")} for w in contributions.get("widgets") or ()
    ]
    assert found["widgets"] == expected_widgets

    expected_samples = [{"key": s["key"], "command": s.get("command")} for s in contributions.get("sample_data") or ()]
    assert expected_samples, "the source manifest lists no sample data"
    assert found["sample_data"] == expected_samples


def test_every_command_resolves_in_the_environment(installed, source_manifest):
    contributions = source_manifest.get("contributions") or {}
    used = [w["command"] for w in contributions.get("widgets") or ()]
    used += [s["command"] for s in contributions.get("sample_data") or () if s.get("command")]
    assert used, "the source manifest lists no widget or sample data"
    # Readers, writers and any other command napari may call must import as well.
    used += [c["id"] for c in contributions.get("commands") or () if c["id"] not in used]

    assert installed["npe2"] is not None, f"npe2 does not find the installed plugin:\n{installed['npe2_error']}"
    problems = []
    for command_id in used:
        outcome = installed["resolved"].get(command_id)
        if outcome is None:
            problems.append(f"{command_id}: no such command in the installed manifest")
        elif outcome["error"]:
            problems.append(f"{command_id}: import failed\n{outcome['error']}")
        elif not outcome["callable"]:
            problems.append(f"{command_id}: the python_name is not callable")
        elif not _is_relative_to(outcome["module_file"], installed["purelib"]):
            problems.append(f"{command_id}: resolved from {outcome['module_file']}, outside the environment")
    assert not problems, "\n".join(problems)


def test_the_sdist_and_the_wheel_pass_twine_check(source, tmp_path):
    """What the publish workflow uploads to PyPI: both distributions, their metadata valid."""
    pytest.importorskip("twine")
    outdir = tmp_path / "dist"
    built = _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", outdir, source], cwd=source,
                 timeout=BUILD_TIMEOUT_S)
    if built.returncode != 0:  # offline: the current interpreter's setuptools
        built = _run([sys.executable, "-m", "build", "--sdist", "--wheel", "--no-isolation", "--outdir", outdir,
                      source], cwd=source, timeout=BUILD_TIMEOUT_S)
    assert built.returncode == 0, _output(built)
    distributions = sorted(path.name for path in outdir.iterdir())
    assert [name.split("-")[0] for name in distributions] == ["napari_unet_loop"] * 2, distributions
    checked = _run([sys.executable, "-m", "twine", "check", "--strict", *sorted(outdir.iterdir())], cwd=tmp_path)
    assert checked.returncode == 0, _output(checked)
