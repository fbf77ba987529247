"""Rule acquire_*: fetch one raw source into data/raw/ (or the weights into models/pretrained/).

Usage: python scripts/acquire.py {covid,kermany,nih,weights} --out PATH [--mirror DIR] [...]
Options are named for the config keys (mirror, acquire.*, pretrained_weights). A failed
download is one line on stderr (URL, cause, what to do); the traceback goes to --traceback.
Downloads are checked against the pins of --locks/<source>.sha256 (or a sha256 option), and
files without a pin are recorded there on first download (cxr.sources.UpstreamLock).
"""

import argparse
import sys
import traceback
from pathlib import Path

from cxr import sources
from cxr.cli import optional
from cxr.io import InputEncodingError

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("what", choices=["covid", "kermany", "nih", "weights"])
p.add_argument("--out", required=True, help="output folder (or .h5 file for weights)")
p.add_argument("--mirror", type=optional(), help="local mirror folder with SHA256SUMS")
p.add_argument("--covid_base_url", help="covid: upstream base URL")
p.add_argument("--kermany_url", help="kermany: upstream URL of the archive")
p.add_argument("--kermany_sha256", type=optional(), help="expected sha256 of that archive")
p.add_argument("--nih_images_base_url", help="nih: upstream base URL of the darkcovidnet PNGs")
p.add_argument("--nih_metadata_url", help="nih: Data_Entry_2017_v2020.csv.gz URL")
p.add_argument("--nih_metadata_sha256", type=optional(), help="nih: sha256 of that file")
p.add_argument(
    "--locks",
    default=sources.LOCKS_DIR,
    help="folder of the committed upstream lock files <source>.sha256 (downloads only)",
)
p.add_argument("--pretrained_weights", type=optional(), help="local VGG19 notop .h5 to copy")
p.add_argument(
    "--traceback",
    type=optional(),
    help="file to append the full traceback of a failed download to (default: none; the"
    " error is one line on stderr either way)",
)
a = p.parse_args()

try:
    if a.what == "covid":
        n = sources.acquire_covid(a.out, mirror=a.mirror, base_url=a.covid_base_url, locks=a.locks)
    elif a.what == "kermany":
        n = sources.acquire_kermany(
            a.out, mirror=a.mirror, url=a.kermany_url, sha256=a.kermany_sha256, locks=a.locks
        )
    elif a.what == "nih":
        n = sources.acquire_nih(
            a.out,
            mirror=a.mirror,
            images_base_url=a.nih_images_base_url,
            metadata_url=a.nih_metadata_url,
            metadata_sha256=a.nih_metadata_sha256,
            locks=a.locks,
        )
    else:
        n = sources.acquire_weights(a.out, source=a.pretrained_weights)
except (
    sources.DownloadError,
    sources.ChecksumError,
    sources.LockError,
    InputEncodingError,
    FileNotFoundError,
) as err:
    # One line that says what failed and what to do; the traceback only where asked for.
    if a.traceback:
        Path(a.traceback).parent.mkdir(parents=True, exist_ok=True)
        with open(a.traceback, "a") as f:
            traceback.print_exc(file=f)
    print(f"acquire {a.what}: failed: {err}", file=sys.stderr)
    sys.exit(1)
print(f"acquire {a.what}: {n} -> {a.out}")
