"""Screenshots of a `saeforge inspect` report in headless Chromium (Debian's chromium +
chromium-driver, driven by selenium), for docs/.

    python scripts/tools/screenshot_report.py REPORT_DIR --out docs/inspect --features 12 40 [--search TEXT]

Writes OUT-list.png (the page as it opens) and OUT-feature-N.png per feature (its details
selected), and OUT-search.png if --search is given.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("report")
    ap.add_argument("--out", required=True, help="path prefix of the PNGs")
    ap.add_argument("--features", type=int, nargs="*", default=[])
    ap.add_argument("--search", default="")
    a = ap.parse_args()
    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(options=opts, service=Service(shutil.which("chromedriver")))
    try:
        driver.get((Path(a.report) / "index.html").resolve().as_uri())
        driver.get_screenshot_as_file(f"{a.out}-list.png")
        for f in a.features:
            driver.find_element(By.CSS_SELECTOR, f"#list li[data-index='{f}']").click()
            driver.find_element(By.ID, "density").get_attribute("src")  # rendered
            driver.execute_script("document.getElementById('density').style.display='none'")
            driver.get_screenshot_as_file(f"{a.out}-feature-{f}.png")
            driver.execute_script("document.getElementById('density').style.display=''")
        if a.search:
            box = driver.find_element(By.ID, "search")
            box.send_keys(a.search)
            driver.get_screenshot_as_file(f"{a.out}-search.png")
    finally:
        driver.quit()
    print(f"wrote {a.out}-*.png")


if __name__ == "__main__":
    main()
