"""Write an HTML template for `dvc plots show` that carries Vega, Vega-Lite and Vega-Embed in
the page itself, so that the plots draw offline (DVC's own page loads them from a CDN):

    python scripts/vega_template.py            # -> dvc_plots/offline.html
    dvc plots show --html-template dvc_plots/offline.html
"""

from __future__ import annotations

import sys
from pathlib import Path

import vl_convert

PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>DVC Plot</title>
    <script>{bundle}</script>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def main(path: str = "dvc_plots/offline.html") -> None:
    bundle = vl_convert.javascript_bundle(snippet="window.vegaEmbed = vegaEmbed;")
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(PAGE.format(bundle=bundle.replace("</script", "<\\/script")))
    print(target)


if __name__ == "__main__":
    main(*sys.argv[1:])
