"""The README's screenshot of the app: serve it on a free port, drive it in headless Chromium, save a PNG.

    python scripts/app_screenshot.py docs/images/app.png [--run outputs/latest] [--scene 1] [--index 5]
        [--question "Find the white bus."]

Needs Debian's chromium (`/usr/bin/chromium`, installed by `make setup`) and the `playwright` package (dev extra);
playwright's own browser download is not used. Picks the scene and sample through the page's controls, asks the
question in the chat, waits for the answer and the redrawn views, and saves a full-page screenshot.
"""

from __future__ import annotations

import argparse
import socket

from fusion.app.server import create_app, launch
from fusion.app.state import AppConfig

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 120_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--run", default="outputs/latest", help="run folder of `make run` (checkpoints, metrics)")
    parser.add_argument("--scene", type=int, default=1, help="scene index in the picker")
    parser.add_argument("--index", type=int, default=5, help="sample index within the scene")
    parser.add_argument("--question", default="Find the white bus.")
    args = parser.parse_args(argv)

    from playwright.sync_api import sync_playwright

    app, state = create_app(AppConfig(run_dir=args.run))
    print(state.model_message, "|", state.qa_message)
    port = free_port()
    launch(app, state, "127.0.0.1", port, block=False)
    scene = state.browser.scenes()[args.scene]
    first = state.browser.samples(scene["token"])[0]
    token_js = "(document.querySelector('#sample-token textarea')?.value ?? '')"
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="load", timeout=TIMEOUT_MS)
            page.wait_for_function(f"() => {token_js}.length > 0", timeout=TIMEOUT_MS)
            if args.scene != 0:
                page.locator("#scene input").first.click()
                page.get_by_role("option", name=scene["name"], exact=False).first.click()
                page.wait_for_function(f"() => {token_js} === '{first}'", timeout=TIMEOUT_MS)
            for _ in range(args.index):
                current = page.locator("#sample-token textarea").input_value()
                page.get_by_role("button", name="next ▶").click()
                page.wait_for_function(f"() => {token_js} !== '{current}'", timeout=TIMEOUT_MS)
            page.wait_for_timeout(3000)  # the camera, BEV and 3D views load after the token changes
            if args.question:
                page.locator("#question textarea").fill(args.question)
                page.locator("#ask").click()
                answer_js = "(document.querySelector('#answer textarea')?.value ?? '')"
                page.wait_for_function(f"() => {answer_js}.length > 0", timeout=TIMEOUT_MS)
                print("answer:", page.locator("#answer textarea").input_value())
                page.wait_for_timeout(6000)  # the views redraw with the grounded objects outlined
            page.evaluate("window.scrollTo(0, 0)")
            page.screenshot(path=args.out, full_page=True)
            browser.close()
    finally:
        app.close()
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
