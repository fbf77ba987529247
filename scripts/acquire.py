"""Rule acquire_*: fetch one raw source into data/raw/ (or the weights into models/pretrained/).

Usage: python scripts/acquire.py {covid,kermany,nih,weights} --out PATH [--mirror DIR] [...]
"""

import argparse
import sys
import traceback
from pathlib import Path

from cxr import sources

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("what", choices=["covid", "kermany", "nih", "weights"])
p.add_argument("--out", required=True, help="output folder (or .h5 file for weights)")
p.add_argument("--mirror", default="", help="local mirror folder with SHA256SUMS")
p.add_argument("--url", default="", help="upstream URL (base URL for covid and nih)")
p.add_argument("--sha256", default="", help="expected sha256 of the Kermany archive / NIH metadata")
p.add_argument("--metadata_url", default="", help="NIH Data_Entry_2017_v2020.csv.gz URL (nih)")
p.add_argument("--weights", default="", help="local VGG19 notop .h5 to copy")
p.add_argument(
    "--traceback",
    default="",
    help="file to append the full traceback of a failed download to (default: none; the"
    " error is one line on stderr either way)",
)
a = p.parse_args()


def unset(text: str) -> str | None:
    """None for '', 'None' and 'null': a null config value (DVC passes it as None)."""
    return None if text in ("", "None", "null") else text


mirror = unset(a.mirror)
try:
    if a.what == "covid":
        n = sources.acquire_covid(a.out, mirror=mirror, base_url=a.url)
    elif a.what == "kermany":
        n = sources.acquire_kermany(a.out, mirror=mirror, url=a.url, sha256=unset(a.sha256))
    elif a.what == "nih":
        n = sources.acquire_nih(
            a.out,
            mirror=mirror,
            images_base_url=a.url,
            metadata_url=a.metadata_url,
            metadata_sha256=unset(a.sha256),
        )
    else:
        n = sources.acquire_weights(a.out, source=unset(a.weights))
except (sources.DownloadError, sources.ChecksumError, FileNotFoundError) as err:
    # One line that says what failed and what to do; the traceback only where asked for.
    if a.traceback:
        Path(a.traceback).parent.mkdir(parents=True, exist_ok=True)
        with open(a.traceback, "a") as f:
            traceback.print_exc(file=f)
    print(f"acquire {a.what}: failed: {err}", file=sys.stderr)
    sys.exit(1)
print(f"acquire {a.what}: {n} -> {a.out}")
