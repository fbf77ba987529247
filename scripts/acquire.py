"""Rule acquire_*: fetch one raw source into data/raw/ (or the weights into models/pretrained/).

Usage: python scripts/acquire.py {covid,kermany,weights} --out PATH [--mirror DIR] [...]
Options are named for the config keys (mirror, acquire.*, pretrained_weights).
"""

import argparse

from cxr import sources
from cxr.cli import optional

p = argparse.ArgumentParser(description=__doc__)
p.add_argument("what", choices=["covid", "kermany", "weights"])
p.add_argument("--out", required=True, help="output folder (or .h5 file for weights)")
p.add_argument("--mirror", type=optional(), help="local mirror folder with SHA256SUMS")
p.add_argument("--covid_base_url", help="covid: upstream base URL")
p.add_argument("--kermany_url", help="kermany: upstream URL of the archive")
p.add_argument("--kermany_sha256", type=optional(), help="expected sha256 of that archive")
p.add_argument("--pretrained_weights", type=optional(), help="local VGG19 notop .h5 to copy")
a = p.parse_args()

if a.what == "covid":
    n = sources.acquire_covid(a.out, mirror=a.mirror, base_url=a.covid_base_url)
elif a.what == "kermany":
    n = sources.acquire_kermany(a.out, mirror=a.mirror, url=a.kermany_url, sha256=a.kermany_sha256)
else:
    n = sources.acquire_weights(a.out, source=a.pretrained_weights)
print(f"acquire {a.what}: {n} -> {a.out}")
