"""NAS-Bench-Macro's CIFAR-10 table: fetched on request, checked against a pinned SHA-256, never shipped.

``xsearch data nas-bench-macro DIR [source=URL_OR_PATH]`` writes ``DIR/nas-bench-macro_cifar10.json``
(what ``evaluator=tabular evaluator.table=...`` and ``xsearch bench strategies`` read) and, beside it,
``DIR/nas-bench-macro_cifar10.NOTICE.txt``: where it came from and under which licence. The table is
third-party data (Su et al., CVPR 2021, Apache-2.0); the project does not redistribute it, so the
command downloads it from the authors' repository at a pinned commit, or copies a copy the user
already has (a path or a ``file://`` URL). Either way the bytes must have ``SHA256``, so every
table the tools read is the one their tests and benchmarks were measured on.
"""

from __future__ import annotations

import hashlib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from xsearch.core.errors import UserError
from xsearch.core.io import atomic_write, write_text

FILE_NAME = "nas-bench-macro_cifar10.json"
NOTICE_NAME = "nas-bench-macro_cifar10.NOTICE.txt"
REPOSITORY = "xiusu/NAS-Bench-Macro"
COMMIT = "8c0d58aed7950ad4d0c373f11a293b85b62ec1f5"  # the README with the paper's citation
URL = f"https://raw.githubusercontent.com/{REPOSITORY}/{COMMIT}/data/{FILE_NAME}"
SHA256 = "686dee8363cc21cca8c1f321ad5749454f2d9b9ca5972682e137e539bc522297"
GET_TABLE = (f"get it with `xsearch data nas-bench-macro DIR` (downloads the table from github.com/{REPOSITORY}, "
             f"or source=PATH copies one you have), then pass evaluator.table=DIR/{FILE_NAME}")

NOTICE = f"""\
{FILE_NAME}: the NAS-Bench-Macro table (CIFAR-10), third-party data.

From: https://github.com/{REPOSITORY} (data/{FILE_NAME}), commit {COMMIT}
Source of this copy: {{source}}
SHA-256: {SHA256} (checked when it was written)

Paper: Xiu Su, Tao Huang, Yanxi Li, Shan You, Fei Wang, Chen Qian, Changshui Zhang and Chang Xu,
"Prioritized Architecture Sampling with Monte-Carlo Tree Search", CVPR 2021 (arXiv:2103.11922).

Copyright 2021 Xiu Su. Licensed under the Apache License, Version 2.0: you may not use this file
except in compliance with the License. A copy of the License is at
http://www.apache.org/licenses/LICENSE-2.0 and in the repository above (LICENSE). Unless required
by applicable law or agreed to in writing, it is distributed on an "AS IS" BASIS, WITHOUT
WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.

Fetched by `xsearch data nas-bench-macro`; xsearch does not ship this file.
"""


def _read(source: str) -> bytes:
    """The bytes at ``source``: an http(s) or file:// URL, or a path (a file, or a folder holding the table)."""
    scheme = urllib.parse.urlparse(source).scheme
    if scheme in ("http", "https"):
        try:
            with urllib.request.urlopen(source, timeout=60) as response:
                return response.read()
        except (urllib.error.URLError, OSError) as exc:
            raise UserError(f"could not download {source}: {exc}. Without internet access copy the table from a "
                            f"machine that has it and pass source=PATH") from None
    path = Path(urllib.request.url2pathname(urllib.parse.urlparse(source).path) if scheme == "file" else source)
    path = path.expanduser()
    if path.is_dir():
        path = path / FILE_NAME
    if not path.is_file():
        raise UserError(f"source={source}: {path} is not a file; pass the path of {FILE_NAME}, the folder holding "
                        f"it, a file:// URL, or leave source= out to download it from github.com/{REPOSITORY}")
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"source={source}: cannot read {path}: {exc}") from None


def fetch_nas_bench_macro(out_dir: str | Path, source: str | None = None,
                          sha256: str = SHA256) -> dict[str, Any]:
    """Write the NAS-Bench-Macro table into ``out_dir`` from ``source`` (default: the pinned GitHub URL).

    The bytes must hash to ``sha256``; otherwise nothing is written and a UserError says what arrived.
    Returns ``{"table", "notice", "source", "sha256", "bytes"}``.
    """
    source = source or URL
    data = _read(source)
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise UserError(f"{source} is not the NAS-Bench-Macro table this version of xsearch expects: its SHA-256 is "
                        f"{digest}, expected {sha256} ({len(data):,} bytes read). Nothing was written; pass "
                        f"source= the unmodified {FILE_NAME} from github.com/{REPOSITORY}")
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder; name a folder for {FILE_NAME}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        table, notice = out / FILE_NAME, out / NOTICE_NAME
        atomic_write(table, lambda f: f.write(data), binary=True)
        write_text(notice, NOTICE.format(source=source))
    except OSError as exc:
        raise UserError(f"cannot write into {out}: {exc}") from None
    return {"table": table, "notice": notice, "source": source, "sha256": digest, "bytes": len(data)}
