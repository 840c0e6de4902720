"""
Subprocesses that import the implementation under test, not the repo's module.

`python -m` puts the working directory first on sys.path, ahead of
PYTHONPATH, so a subprocess started in the repo would import the repo's
rnn_lstm_captioning.py whatever --impl says. These subprocesses run in a
folder of their own where the file under test is linked as
rnn_lstm_captioning.py, with the repo after it on PYTHONPATH (for helper/).
"""
import os
from pathlib import Path
from typing import Dict, Tuple

REPO_ROOT = Path(__file__).resolve().parent.parent.parent


def impl_process(impl, folder: Path) -> Tuple[Dict[str, str], Path]:
    """
    The environment and working directory for a subprocess of the tool.

    Inputs:
    - impl: the module under test (the `impl` fixture)
    - folder: an empty scratch folder (tmp_path / something)

    Returns a tuple of:
    - env: os.environ with PYTHONPATH = folder, the repo, the old PYTHONPATH
    - cwd: folder, holding rnn_lstm_captioning.py linked to the file under test
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "rnn_lstm_captioning.py").symlink_to(Path(impl.__file__).resolve())
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(folder), str(REPO_ROOT), env.get("PYTHONPATH", "")) if p)
    env["OMP_NUM_THREADS"] = "1"  # the subprocesses share the machine's cores
    return env, folder
