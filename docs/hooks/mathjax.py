"""mkdocs hook: serve MathJax with the site, so formulas render on a machine without internet.

At build time MathJax (a pinned release from the npm registry, checked
against the registry's sha512 integrity) is unpacked once into
``docs/javascripts/vendor/mathjax/`` (ignored by git): the script the pages
load and the web fonts it reads from beside it.  The built site then
references no network address for its math.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import tarfile
import urllib.request
from pathlib import Path

VERSION = "3.2.2"
TARBALL = f"https://registry.npmjs.org/mathjax/-/mathjax-{VERSION}.tgz"
INTEGRITY = "sha512-Bt+SSVU8eBG27zChVewOicYs7Xsdt40qm4+UpHyX7k0/O9NliPc+x77k1/FEsPsjKPZGJvtRZM1vO+geW0OhGw=="
WANTED = ("package/es5/tex-mml-chtml.js", "package/es5/output/chtml/fonts/woff-v2/", "package/LICENSE")
HERE = Path(__file__).resolve().parents[1] / "javascripts" / "vendor" / "mathjax"
log = logging.getLogger("mkdocs.hooks.mathjax")


def _fetch() -> None:
    log.info("fetching MathJax %s from the npm registry", VERSION)
    try:
        with urllib.request.urlopen(TARBALL, timeout=60) as response:
            data = response.read()
    except OSError as err:
        raise SystemExit(
            f"MathJax {VERSION} could not be fetched from {TARBALL} ({err}); the documentation serves its own "
            f"copy so that it renders offline. Fetch the file on a machine that can reach the npm registry "
            f"and unpack its es5/ folder and LICENSE into {HERE}."
        ) from None
    digest = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if digest != INTEGRITY:
        raise SystemExit(f"MathJax {VERSION} from {TARBALL} failed its integrity check ({digest})")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name
            if member.isfile() and any(name == w or (w.endswith("/") and name.startswith(w)) for w in WANTED):
                target = HERE / member.name.removeprefix("package/es5/").removeprefix("package/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(tar.extractfile(member).read())


def on_config(config):
    if not (HERE / "tex-mml-chtml.js").exists():
        _fetch()
    return config
