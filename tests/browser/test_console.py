"""The operator console in a real browser (headless Chromium): forms, live
states, actions, failures, cancel, roles, phone width, and no console errors."""

import json
import re

from playwright.sync_api import expect

from conftest import OPERATOR, PHONE, VIEWER, new_page, shot, sign_in

LIVE = 30_000  # ms: long enough for a create on the simulated cloud


def create_instance(page, name, sim=None, flavor="small"):
    """Fills the generated create form and submits it; waits for the resource page."""
    page.goto("/ui/resources")
    page.get_by_role("link", name="New instance").click()
    expect(page.get_by_role("heading", name="New instance")).to_be_visible()
    page.get_by_label("name").first.fill(name)
    page.get_by_label("tenant").fill("acme")
    page.get_by_label("flavor").select_option(label=flavor)
    if sim is not None:
        page.get_by_label("sim (JSON)").fill(json.dumps(sim))
    page.get_by_role("button", name="Create instance").click()
    page.wait_for_url(re.compile(r"/ui/resources/[0-9a-f-]{36}$"))
    expect(page.get_by_role("heading", name=name)).to_be_visible()


def test_create_through_the_form_goes_ok_live_then_stop(operator):
    page = operator
    create_instance(page, "web-browser-1")
    state = page.locator("#resource-state")
    # Shown before it is ok, then ok without a reload.
    expect(state).not_to_have_text("ok", timeout=2_000)
    shot(page, "resource-creating")
    expect(state).to_have_text("ok", timeout=LIVE)
    expect(page.locator("#runtime-state")).to_have_text("ACTIVE")
    expect(page.locator(".timeline .tl").first).to_contain_text("set ok")
    shot(page, "resource")

    page.get_by_role("button", name="stop", exact=True).click()
    page.wait_for_url(re.compile(r"/ui/operations/"))
    expect(page.locator("#operation-state")).to_have_text("succeeded", timeout=LIVE)
    expect(page.locator(".task").last).to_have_attribute("data-state", "succeeded")
    shot(page, "operation")

    page.get_by_role("link", name=re.compile(r"^instance ")).first.click()
    expect(page.locator("#runtime-state")).to_have_text("SHUTOFF", timeout=LIVE)
    expect(page.get_by_role("button", name="start", exact=True)).to_be_enabled()
    expect(page.get_by_role("button", name="stop", exact=True)).to_be_disabled()


def test_a_failed_operation_shows_its_error(operator):
    page = operator
    create_instance(
        page,
        "web-browser-fails",
        sim={"fail_on": "create_instance", "message": "No valid host was found"},
    )
    expect(page.locator("#resource-state")).to_have_text("erred", timeout=LIVE)
    expect(page.get_by_role("alert").filter(has_text="No valid host was found")).to_be_visible()
    page.locator("table").get_by_role("link", name=re.compile(r"^create")).click()
    expect(page.locator("#operation-state")).to_have_text("failed", timeout=LIVE)
    expect(page.locator("#operation-error")).to_contain_text("No valid host was found")
    expect(page.get_by_role("button", name="Retry from the failed step")).to_be_visible()
    shot(page, "operation-failed")

    page.get_by_role("link", name="Overview").click()
    expect(page.get_by_role("heading", name="Needs attention")).to_be_visible()
    expect(page.locator("main")).to_contain_text("No valid host was found")
    expect(page.locator(".chart svg")).to_be_visible()
    shot(page, "overview")


def test_cancel_a_running_operation(operator):
    page = operator
    # The create call hangs (until the backend timeout): the operation runs.
    create_instance(page, "web-browser-hangs", sim={"hang_calls": 1})
    page.get_by_role("link", name="follow the operation").click()
    expect(page.locator("#operation-state")).to_have_text("running", timeout=LIVE)
    expect(page.locator('.task[data-state="running"]')).to_be_visible(timeout=LIVE)
    shot(page, "operation-running")
    operation = page.url
    # The overview shows it: a running task, and a throttle slot in use.
    page.get_by_role("link", name="Overview").click()
    running = page.locator("section", has=page.get_by_role("heading", name="Running tasks"))
    expect(running.get_by_role("link", name="create_instance")).to_be_visible()
    throttles = page.locator("section", has=page.get_by_role("heading", name="Throttle scopes"))
    expect(throttles).to_contain_text("1/4")
    shot(page, "overview-busy")
    page.goto(operation)
    page.get_by_role("button", name="Cancel operation").click()
    page.get_by_role("dialog").get_by_role("button", name="Cancel it").click()
    expect(page.locator("#operation-state")).to_have_text("cancelled", timeout=LIVE)
    expect(page.get_by_role("button", name="Cancel operation")).to_have_count(0)


def test_field_errors_from_the_api_show_beside_their_fields(operator):
    page = operator
    page.goto("/ui/kinds/volume/new")
    size = page.get_by_label("size gb")
    expect(size).to_have_attribute("max", "16384")
    page.get_by_label("name").first.fill("vol-too-big")
    page.get_by_label("tenant").fill("acme")
    size.fill("99999")
    page.get_by_role("button", name="Create volume").click()
    # The browser's own check of the schema's maximum, first.
    field = page.locator('.field[data-pointer="/attributes/size_gb"]')
    expect(field.locator(".field-error")).not_to_be_empty()
    # Then the API's, with the form's own limits lifted.
    size.evaluate("el => el.removeAttribute('max')")
    page.get_by_role("button", name="Create volume").click()
    expect(field.locator(".field-error")).to_contain_text("16384")
    expect(field).to_have_class(re.compile("invalid"))
    shot(page, "form-errors")
    size.fill("10")
    page.get_by_role("button", name="Create volume").click()
    page.wait_for_url(re.compile(r"/ui/resources/[0-9a-f-]{36}$"))


def test_lists_jobs_and_keyboard(operator):
    page = operator
    page.goto("/ui/resources?state=ok")
    expect(page.get_by_label("State")).to_have_value("ok")
    expect(page.get_by_role("link", name="web-browser-1")).to_be_visible(timeout=LIVE)
    page.get_by_label("Name").fill("no-such-name")
    expect(page.get_by_text("No resources match.")).to_be_visible()
    page.get_by_label("Name").fill("browser")
    expect(page.get_by_role("link", name="web-browser-1")).to_be_visible()
    shot(page, "resources")
    page.goto("/ui/jobs")
    expect(page.get_by_role("heading", name="Background jobs")).to_be_visible()
    shot(page, "jobs")
    page.goto("/ui/kinds/instance/new")
    shot(page, "form")
    # Keyboard: the skip link first, then the navigation, all with focus.
    page.goto("/ui")
    page.keyboard.press("Tab")
    expect(page.locator(".skip")).to_be_focused()
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    expect(page.get_by_role("link", name="Overview")).to_be_focused()


def test_a_viewer_sees_no_mutating_buttons(browser):
    page = new_page(browser)
    sign_in(page, VIEWER)
    expect(page.locator("#who .role")).to_have_text("viewer")
    page.goto("/ui/resources")
    expect(page.get_by_role("link", name="web-browser-1")).to_be_visible(timeout=LIVE)
    expect(page.get_by_role("link", name=re.compile("^New "))).to_have_count(0)
    page.get_by_role("link", name="web-browser-1").click()
    expect(page.locator("#resource-state")).to_be_visible()
    expect(page.locator("main button")).to_have_count(0)
    shot(page, "resource-viewer")
    page.locator("table").get_by_role("link", name=re.compile(r"^create")).click()
    expect(page.locator("#operation-state")).to_be_visible()
    expect(page.locator("main button")).to_have_count(0)
    page.console.assert_clean()
    page.context.close()


def test_a_bad_token_is_refused_and_asked_again(browser):
    page = new_page(browser)
    page.goto("/ui/resources")
    if not OPERATOR:
        return  # open mode: no token is asked
    page.get_by_label("Token", exact=True).fill("exd_not_a_token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.locator("#token-error")).to_contain_text("unknown or revoked")
    page.get_by_label("Token", exact=True).fill(OPERATOR)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("heading", name="Resources")).to_be_visible()
    # The token is kept for the tab: a reload asks nothing.
    page.reload()
    expect(page.get_by_role("heading", name="Resources")).to_be_visible()
    expect(page.locator("#token-dialog")).not_to_be_visible()
    page.console.assert_clean()
    page.context.close()


def test_every_page_fits_a_phone(browser):
    page = new_page(browser, PHONE)
    sign_in(page, OPERATOR)
    page.goto("/ui/resources")
    link = page.get_by_role("link", name="web-browser-1")
    expect(link).to_be_visible(timeout=LIVE)
    resource = link.get_attribute("href")
    pages = {"overview": "/ui", "resources": "/ui/resources", "resource": resource, "jobs": "/ui/jobs", "form": "/ui/kinds/instance/new"}
    for name, url in pages.items():
        page.goto(url)
        expect(page.locator("main h1")).to_be_visible()
        # Not "networkidle": the page keeps its event stream open. Its
        # first data is in once no section says it is loading.
        expect(page.locator("main").get_by_text("Loading…")).to_have_count(0)
        page.wait_for_load_state("load")
        overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 1, f"{name} is {overflow}px wider than the screen"
        shot(page, name)
    page.goto(resource)
    page.locator("table").get_by_role("link", name=re.compile(r"^create")).click()
    expect(page.locator("#operation-state")).to_be_visible()
    shot(page, "operation")
    page.console.assert_clean()
    page.context.close()


def test_generated_forms_handle_booleans_limits_and_arrays_of_objects(operator):
    """The form generator on a schema richer than the built-in kinds'."""
    page = operator
    page.goto("/ui/jobs")
    expect(page.get_by_role("heading", name="Background jobs")).to_be_visible()
    page.evaluate(
        """async () => {
            const src = document.querySelector('script[type=module]').src;
            const form = await import(src.replace('app.js', 'form.js'));
            const schema = {type: 'object', required: ['disks'], properties: {
                public: {type: 'boolean'},
                mode: {enum: ['fast', 'safe']},
                disks: {type: 'array', items: {type: 'object', title: 'disk', required: ['size_gb'],
                    properties: {size_gb: {type: 'integer', minimum: 1, maximum: 100}, ssd: {type: 'boolean'}}}},
            }};
            const fields = form.objectFields(schema, '/attributes');
            const holder = document.createElement('form');
            holder.id = 'probe';
            holder.append(fields.el);
            document.querySelector('main').replaceChildren(holder);
            window.readProbe = () => fields.read();
        }"""
    )
    probe = page.locator("#probe")
    expect(probe.get_by_label("mode")).to_have_js_property("tagName", "SELECT")
    probe.get_by_label("public").check()
    probe.get_by_role("button", name="Add disk").click()
    probe.get_by_role("button", name="Add disk").click()
    sizes = probe.get_by_label("size gb")
    expect(sizes).to_have_count(2)
    expect(sizes.first).to_have_attribute("max", "100")
    sizes.nth(0).fill("10")
    sizes.nth(1).fill("20")
    probe.get_by_label("ssd").nth(1).check()
    probe.get_by_role("button", name=re.compile("^Remove item 1")).click()
    probe.get_by_label("mode").select_option("safe")
    assert page.evaluate("readProbe()") == {
        "disks": [{"size_gb": 20, "ssd": True}],
        "public": True,
        "mode": "safe",
    }
