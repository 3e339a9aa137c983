"""A screenshot of a review patient's task in Label Studio, as a reviewer sees it (docs/review.md).

Logs in with Playwright driving Debian's Chromium (headless), opens the task of the patient of the review
queue that comes first (or ``--patient``), waits for every cell's picture, and saves the page.

    .venv/bin/python docs/tools/review_screenshot.py --out docs/review-task.png [--patient C99P60ThinF]

Run in the project root after `kedro run --pipelines review`, with Label Studio running (make label-studio)
and the account of conf/local/credentials.yml (username, password, api_key) or the environment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from malaria_pipeline.framework.label_studio import LabelStudioProjectDataset
from malaria_pipeline.framework.label_studio_server import credentials

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--patient", default=None)
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--project", default="Malaria review")
    args = parser.parse_args()

    account = credentials(Path.cwd())
    project = LabelStudioProjectDataset(url=args.url, project=args.project, credentials=account).load()
    tasks = [t for t in project["tasks"] if t["data"].get("kind") == "patient"]
    task = next(t for t in tasks if args.patient in (None, t["data"]["patient"]))
    cells = len(task["data"]["cells"])

    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            page.goto(f"{args.url}/user/login")
            page.fill("input#email", account["username"])
            page.fill("input#password", account["password"])
            page.click("button[type=submit]")
            page.wait_for_url(lambda url: "/user/login" not in url, timeout=60_000)
            page.goto(f"{args.url}/projects/{project['project_id']}/data?task={task['id']}")
            page.get_by_text(f"Cell 1 of {cells}").first.wait_for(timeout=60_000)
            page.wait_for_function(
                "n => [...document.images].filter(i => i.naturalWidth > 0 && i.naturalWidth === 2 * i.naturalHeight)"
                ".length >= n",
                arg=cells,
                timeout=60_000,
            )
            page.screenshot(path=str(args.out), full_page=True)
        finally:
            browser.close()
    print(f"{args.out}: patient {task['data']['patient']}, task {task['id']}, {cells} cells")


if __name__ == "__main__":
    main()
