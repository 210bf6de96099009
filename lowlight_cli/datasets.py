"""Where ``lowlight train`` and ``lowlight benchmark`` find LOL when ``--data`` is not given.

The default is ``lol/`` in the user data folder (platformdirs, e.g. ``~/.local/share/lowlight/
datasets/lol`` on Linux), or in ``LOWLIGHT_DATA_DIR``. lowlight does not download LOL: its
authors publish it behind a file host that needs a browser, so the error says where to put it.
"""

from __future__ import annotations

import os
from pathlib import Path

from lowlight_cli.constants import APP_NAME, ENV_DATA_DIR
from lowlight_cli.errors import UsageError

LOL_PAGE = "https://daooshee.github.io/BMVC2018website/"


def data_dir() -> Path:
    """The folder that holds the datasets: ``LOWLIGHT_DATA_DIR`` or the user data dir."""
    override = os.environ.get(ENV_DATA_DIR)
    if override:
        return Path(override).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir(APP_NAME, appauthor=False)) / "datasets"


def default_lol() -> Path | None:
    """``<data dir>/lol`` when it exists, else None."""
    path = data_dir() / "lol"
    return path if path.is_dir() else None


def require_data(dataset: str, data: Path | None) -> Path:
    """``data``, or the default folder of ``dataset`` when it is None.

    Raises:
        UsageError: no ``--data`` for a dataset without a default folder, or LOL is not in
            its default folder (the hint says where to get it and where to put it).
    """
    if data is not None:
        return data
    if dataset != "lol":
        raise UsageError(
            f"--dataset {dataset} needs --data FOLDER",
            hint="pairs: a folder with low/ and high/; synthetic: a folder of normal-light photos",
        )
    found = default_lol()
    if found is None:
        raise UsageError(
            f"no LOL data: --data was not given and {data_dir() / 'lol'} does not exist",
            hint=f"download LOL ({LOL_PAGE}) and unpack it there, so that it holds our485/ and "
            f"eval15/, each with low/ and high/ (or set {ENV_DATA_DIR} to the folder that holds "
            "lol/), or pass --data FOLDER",
        )
    return found
