"""``build_demo(settings)``: the whole web app, one module per tab.

This module wires what crosses tabs: the per-session vectors (``gr.State``), the lists that
must be refreshed when they change, "Try it in Steer", the Tour's "Open this in its tab" (the
Tour is the first tab; a share link still opens Steer), and share links read on page load.

The pattern every tab follows (a new tab copies it):

* Each tab is a package ``ui/<tab>/`` beside ``ui/shared/``: ``tab.py`` lays it out and wires
  its events; ``handlers.py`` holds what the events call; ``views.py`` (where a tab has much to
  show) turns results into component updates; ``components.py`` holds the tab's widget
  ``@dataclass`` when handlers need it. Handlers and views never import ``tab.py``; a tab never
  imports another tab (cross-tab wiring lives here, in :func:`build_demo`);
  ``tests/test_architecture.py`` checks both.
* ``tab.py`` has ``build(ctx, state) -> <Tab>``: it lays out the components, fills the
  ``@dataclass`` ``<Tab>`` with the ones other code needs, wires events, and returns it. Nothing
  else happens inside ``build``: events call **module-level handlers**, through a one-line
  lambda or closure that passes ``ctx`` and the tab.
* A handler takes ``(ctx, tab, form_or_values, session[, request, progress])``, converts and
  checks input with ``core.limits`` (through a small **form dataclass** when an action has more
  than a couple of inputs: see ``shared.forms``): the request is checked once, here, into typed
  values, and everything below takes those. It calls **one** domain function, and formats its
  result as ``{component: update}``. Work longer than a step is a generator, so Stop
  (``cancels=``) ends it between steps; a progress bar comes from ``gr.Progress``.
* Errors: the body runs inside ``with user_errors():`` (``shared.context``): the project's own
  ``UserError`` types reach the user as ``gr.Error``; anything else is logged as a bug and shown
  as a generic message.
* Rules are enforced in the handler, never by hiding a button: every event can be called by a
  script. Events that are not meant as an API are ``api_visibility="private"``; public ones get
  an ``api_name`` and a form whose field names are the API's parameter names.
* Vectors are looked up through ``ctx.catalog.view(session)``: one scan of the built-ins, the
  library and the session's vectors, from which every list on screen is built.
* Per-visitor data lives in ``gr.State``; ``ctx`` is shared by everyone and read-only apart
  from the on-disk library. The "What am I looking at?" text lives in ``shared.teaching``.

Imports: every tab package, ``ui.shared``, the domain layer and ``plots``; gradio is imported
nowhere outside ``ui``.
"""

from __future__ import annotations

import html
import threading
from typing import Any

import gradio as gr
from starlette.middleware import Middleware

from persona_explorer.core.config import REPO_ROOT, Settings
from persona_explorer.core.errors import InputError
from persona_explorer.core.limits import (
    check_layer,
    check_max_new_tokens,
    check_penalty,
    check_seed,
    check_strength,
    check_temperature,
    check_text,
)
from persona_explorer.engine import threads as omp
from persona_explorer.engine.model import LoadedModel
from persona_explorer.steering.ops import check_positions
from persona_explorer.ui.drift import tab as drift
from persona_explorer.ui.extract import tab as extract
from persona_explorer.ui.finetune import tab as train_tab
from persona_explorer.ui.library import tab as library_tab
from persona_explorer.ui.persona_space import tab as persona_space
from persona_explorer.ui.screening import tab as screening_tab
from persona_explorer.ui.shared.blocks import LeanBlocks
from persona_explorer.ui.shared.catalog import CatalogView
from persona_explorer.ui.shared.context import AppContext, check_owner, new_owner_token, user_errors
from persona_explorer.ui.shared.fairness import limit_jobs_per_visitor
from persona_explorer.ui.shared.markup import plain
from persona_explorer.ui.shared.requests import AUTO_READOUT
from persona_explorer.ui.shared.uploads import UploadQuota
from persona_explorer.ui.steer import compare as compare_panel
from persona_explorer.ui.steer import tab as steer
from persona_explorer.ui.sweep import tab as sweep_tab
from persona_explorer.ui.tour import handlers as tour_steps
from persona_explorer.ui.tour import tab as tour_tab

__all__ = ["build_app", "build_demo", "configure_queue", "launch", "launch_kwargs", "theme"]

# Gradio's own bound on everything queued (its refusal reads "currently busy"): well above
# what the per-visitor and per-address caps let in, so that those, with their messages, refuse.
QUEUE_SIZE = 256

CSS_PATH = REPO_ROOT / "assets" / "style.css"
TITLE = "Persona Explorer"


def theme() -> gr.themes.Base:
    # Local fonts only: the app must look right on machines without internet access.
    return gr.themes.Default(
        primary_hue="indigo",
        secondary_hue="orange",
        neutral_hue="slate",
        radius_size="md",
        # Gradio ships these font files; listing 700 too keeps bold text from being synthesised.
        font=(
            gr.themes.LocalFont("Source Sans Pro", weights=(400, 600, 700)),
            "ui-sans-serif",
            "system-ui",
            "sans-serif",
        ),
    ).set(
        block_title_text_weight="600",
        button_primary_background_fill="*primary_600",
        button_primary_background_fill_hover="*primary_700",
    )


def configure_queue(demo: gr.Blocks, settings: Settings) -> gr.Blocks:
    """The queue every event goes through: heavy jobs capped per visitor and per address, and
    served in a fair order (``shared.fairness``)."""
    demo.queue(max_size=QUEUE_SIZE, default_concurrency_limit=4)
    limits = settings.limits
    limit_jobs_per_visitor(
        demo,
        limits.max_pending_per_visitor,
        limits.max_pending_per_address,
        trusted_hops=settings.trusted_proxy_hops,
    )
    return demo


def build_app(settings: Settings) -> gr.Blocks:
    """The queued app, built (model loaded, first views drawn) on a thread that then ends.

    Why a thread: libgomp, which runs torch's CPU kernels, gives every thread that starts an
    OpenMP region its own pool of workers, and once it manages more threads than there are CPUs
    its workers sleep between regions instead of spinning. Built on the main thread, whose pool
    lives as long as the server, every generation run by Gradio's worker threads was 1.7x
    slower (16.4 vs 27.6 ms a step on 2 cores, README "Where one visitor's time goes"); the
    pool of a thread that has ended is freed.
    """
    built: dict[str, Any] = {}

    def build() -> None:
        try:
            built["demo"] = configure_queue(build_demo(settings), settings)
        except BaseException as exc:  # re-raised on the caller's thread
            built["error"] = exc

    thread = threading.Thread(target=build, name="persona-explorer-build")
    thread.start()
    thread.join()
    if "error" in built:
        raise built["error"]
    return built["demo"]


def launch(demo: gr.Blocks, settings: Settings) -> None:
    """Serve ``demo`` until stopped (``python app.py``). With the shared batch, the thread that
    serves, and so every web thread it starts, first yields the CPU to the engine thread
    (``settings.web_nice``; ``engine.threads.yield_cpu``)."""
    if settings.shared_batch:
        omp.yield_cpu(settings.web_nice)
    demo.launch(**launch_kwargs(settings))


def launch_kwargs(settings: Settings) -> dict[str, Any]:
    """Everything ``demo.launch`` needs besides the demo (Gradio 6 takes theme and css here)."""
    return {
        "server_name": settings.server_name,
        "server_port": settings.server_port,
        "theme": theme(),
        "css_paths": [CSS_PATH] if CSS_PATH.is_file() else None,
        "max_file_size": settings.limits.max_upload_bytes,
        # Every visitor decoding in the shared batch holds one of Gradio's worker threads.
        "max_threads": max(40, settings.steer_concurrency + settings.extract_concurrency + 16),
        # Upload quotas per address and in total, before Gradio receives a byte.
        "app_kwargs": {
            "middleware": [
                Middleware(
                    UploadQuota,
                    per_address=settings.limits.upload_quota_bytes,
                    total=settings.limits.upload_total_bytes,
                    trusted_hops=settings.trusted_proxy_hops,
                )
            ]
        },
        "footer_links": ["api", "gradio"],
    }


def header_html(ctx: AppContext) -> str:
    """The title and a badge naming the model. The badge's two parts (the name; the layers,
    width and device) are separate, so a phone puts them on two lines instead of overflowing."""
    m = ctx.model
    return (
        '<div class="pe-header">'
        '<div class="pe-title"><h1>Persona Explorer</h1>'
        "<p>Find, steer and compare the characters inside a language model.</p></div>"
        f'<div class="pe-model" title="{html.escape(m.model_id)}">'
        f'<span class="pe-model-name"><span class="pe-model-label">Model</span> '
        f"<b>{html.escape(m.display_name)}</b></span> "
        f'<span class="pe-model-facts">{m.n_layers} layers · d_model {m.d_model} · '
        f"{html.escape(m.device.type)}</span></div>"
        "</div>"
    )


def build_demo(settings: Settings, model: LoadedModel | None = None) -> gr.Blocks:
    """The app. Loads the model (once) unless one is given."""
    ctx = AppContext.create(settings, model)
    with LeanBlocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        session = gr.State({})
        # A random token in this browser marks the vectors it saves in the shared library:
        # only it may rename or delete them. Encrypted with a key kept across restarts.
        owner = gr.BrowserState(
            None, storage_key="persona-explorer-owner", secret=ctx.browser_secret
        )
        gr.HTML(header_html(ctx))
        with gr.Tabs(selected="tour", elem_id="pe-tabs", overflow_behavior="wrap") as tabs:
            with gr.Tab("Tour", id="tour", elem_id="pe-tab-tour"):
                tour = tour_tab.build(ctx, session)
            with gr.Tab("Steer", id="steer", elem_id="pe-tab-steer"):
                st = steer.build(ctx, session)
            with gr.Tab("Extract", id="extract", elem_id="pe-tab-extract"):
                ex = extract.build(ctx, session)
            with gr.Tab("Library", id="library", elem_id="pe-tab-library"):
                lib = library_tab.build(ctx, session, owner)
            with gr.Tab("Persona space", id="space", elem_id="pe-tab-space"):
                sp = persona_space.build(ctx, session)
            with gr.Tab("Drift", id="drift", elem_id="pe-tab-drift"):
                dr = drift.build(ctx, session)
            with gr.Tab("Screen data", id="screen", elem_id="pe-tab-screen"):
                sc = screening_tab.build(ctx, session)
            with gr.Tab("Sweep", id="sweep", elem_id="pe-tab-sweep"):
                sw = sweep_tab.build(ctx, session, owner)
            with gr.Tab("Train", id="train", elem_id="pe-tab-train"):
                tr = train_tab.build(ctx, session)

        assert st.compare is not None
        rows = st.compare.personas
        list_outputs = [
            st.persona, lib.table, lib.selected, lib.heat_pick, sp.personas, sc.vectors,
            sw.persona, tr.vectors, tr.steer_vector, *rows,
        ]  # fmt: skip

        def refresh_lists(
            session: dict | None,
            persona: str | None,
            selected: str | None,
            heat: list | None,
            mapped: list | None,
            screened: list | None,
            swept: str | None,
            measured: list | None,
            steered: str | None,
            *compared: str | None,
        ) -> dict:
            """Re-list the vectors everywhere (after an upload, extraction, rename, ...)."""
            view = ctx.catalog.view(session)
            updates = list_updates(ctx, st, lib, view, persona, selected, heat)
            updates[sp.personas] = persona_space.refresh_personas(ctx, session, mapped)
            updates[sc.vectors] = screening_tab.refresh_vectors(ctx, session, screened or [])
            updates[sw.persona] = sweep_tab.refresh_vectors(ctx, session, swept)
            updates[tr.vectors] = train_tab.refresh_vectors(ctx, session, measured or [])
            updates[tr.steer_vector] = train_tab.refresh_steer_vector(ctx, session, steered)
            return updates | compare_panel.list_updates(st.compare, view, list(compared))  # type: ignore[arg-type]

        refresh_inputs = [
            session, st.persona, lib.selected, lib.heat_pick, sp.personas, sc.vectors,
            sw.persona, tr.vectors, tr.steer_vector, *rows,
        ]  # fmt: skip
        for event in [ex.extracted, *lib.changed]:
            event.then(refresh_lists, refresh_inputs, list_outputs, api_visibility="private")

        def follow_in_steer(key: str | None, session: dict | None) -> dict:
            """The Steer tab on ``key``, at the layer and strength that vector records."""
            with user_errors():
                view = ctx.catalog.view(session)
                item = view.resolve(key)
                return {
                    st.persona: gr.update(choices=view.persona_choices(), value=item.key),
                    **st.controls_for(ctx, item, view),
                }

        def try_in_steer(key: str | None, session: dict | None) -> dict:
            return {tabs: gr.Tabs(selected="steer"), **follow_in_steer(key, session)}

        # Only after a recording succeeded: a refused one leaves the lists and Steer as they are.
        sw.used.success(
            refresh_lists, refresh_inputs, list_outputs, api_visibility="private"
        ).success(
            follow_in_steer,
            [sw.used_key, session],
            [st.persona, st.layer, st.strength, st.multiple, st.unit, st.persona_info],
            api_visibility="private",
        )

        ex.try_it.click(
            try_in_steer,
            [ex.last, session],
            [tabs, st.persona, st.layer, st.strength, st.multiple, st.unit, st.persona_info],
            api_visibility="private",
        )

        ex.save.click(
            lambda key, s, token: extract.save_extracted(ctx, ex, key, s, owner=token),
            [ex.last, session, owner],
            [session, ex.last, ex.save],
            show_progress="hidden",
            api_visibility="private",
        ).then(refresh_lists, refresh_inputs, list_outputs, api_visibility="private")

        assert st.capping is not None
        cap = st.capping
        tour_outputs = [
            tabs, st.prompt, st.system, st.persona, st.layer, st.strength, st.multiple, st.unit,
            st.persona_info, st.max_new_tokens, st.temperature, st.frequency_penalty, st.seed,
            cap.combine, cap.layers,
            cap.percentile, cap.max_new_tokens, sp.layer, dr.transcripts, dr.plot_layer,
            sc.dataset, sc.vectors, sc.layer, sc.own, tr.dataset, tr.with_context, tr.context,
        ]  # fmt: skip

        def open_tour_step(step: str | None, session: dict | None) -> dict:
            """The Tour step's tab, with the settings the step used."""
            with user_errors():
                c = tour_steps.carry(ctx, step, session)
                out: dict[Any, Any] = {tabs: gr.Tabs(selected=c.tab)}
                if c.tab == "steer":
                    out |= {st.prompt: c.prompt, st.system: "", st.seed: 0}
                    out |= {st.temperature: c.temperature, st.max_new_tokens: c.max_new_tokens}
                    out[st.frequency_penalty] = c.frequency_penalty
                    if c.persona is not None:
                        out |= follow_in_steer(c.persona, session)
                        out[st.strength] = c.strength
                    if c.cap_layers:
                        span = f"{c.cap_layers[0]}-{c.cap_layers[-1]}"
                        out |= {cap.combine: False, cap.layers: span}
                        out |= {cap.percentile: c.cap_percentile}
                        out[cap.max_new_tokens] = c.max_new_tokens
                elif c.tab == "space":
                    out[sp.layer] = c.layer
                elif c.tab == "drift":
                    out |= {dr.transcripts: list(c.transcripts), dr.plot_layer: c.layer}
                elif c.tab == "screen":
                    out |= {sc.dataset: c.dataset, sc.vectors: list(c.vectors), sc.own: True}
                    if c.layer is not None:
                        out[sc.layer] = c.layer
                elif c.tab == "train":
                    out |= {tr.dataset: c.dataset, tr.with_context: False, tr.context: c.context}
                return out

        tour.open.click(
            open_tour_step, [tour.steps, session], tour_outputs, api_visibility="private"
        )

        def on_load(session: dict | None, token: object, request: gr.Request) -> dict:
            """Fresh lists (the library may have changed), any share-link parameters, and an
            owner token for a browser that has none."""
            params = dict(request.query_params) if request is not None else {}
            view = ctx.catalog.view(session)
            shared, persona_key = apply_share_params(ctx, st, view, params)
            updates = list_updates(ctx, st, lib, view, persona_key, None, None)
            updates[sp.personas] = persona_space.refresh_personas(ctx, session, None)
            updates[sc.vectors] = screening_tab.refresh_vectors(ctx, session, None)
            updates[sw.persona] = sweep_tab.refresh_vectors(ctx, session, None)
            updates[tr.vectors] = train_tab.refresh_vectors(ctx, session, None)
            updates[tr.steer_vector] = train_tab.refresh_steer_vector(ctx, session, None)
            try:
                check_owner(token)
            except InputError:
                updates[owner] = new_owner_token()
            if shared:
                updates |= shared
                updates[tabs] = gr.Tabs(selected="steer")
            return updates

        demo.load(
            on_load,
            [session, owner],
            [
                owner,
                *list_outputs,
                *st.share_inputs,
                st.multiple,
                st.unit,
                st.persona_info,
                tabs,
            ],
            api_visibility="private",
        ).then(
            None,
            inputs=st.share_inputs,
            outputs=[st.share],
            js=steer.SHARE_LINK_JS,
        )
    return demo


def list_updates(
    ctx: AppContext,
    st: steer.SteerTab,
    lib: library_tab.LibraryTab,
    view: CatalogView,
    persona: str | None,
    selected: str | None,
    heat: list | None,
) -> dict:
    """Every list of vectors on the page, from one scan of the catalog."""
    choices = view.persona_choices()
    keys = {k for _, k in choices}
    heat_keys = [k for _, k in view.fitting_choices()]
    if heat is None:  # page load: the first few
        heat_value = heat_keys[: library_tab.MAX_HEATMAP_DEFAULT]
    else:  # keep the user's choice; a just-added vector (now selected) joins it
        heat_value = [k for k in heat if k in heat_keys]
        if selected in heat_keys and selected not in heat_value:
            heat_value.append(selected)
        heat_value = heat_value[: ctx.settings.limits.max_heatmap_vectors]
    item_keys = [k for _, k in view.item_choices()]
    default = view.default_key(ctx.settings.default_persona)
    return {
        st.persona: gr.update(choices=choices, value=persona if persona in keys else default),
        lib.table: library_tab.table_rows(view),
        lib.selected: gr.update(
            choices=view.item_choices(),
            value=selected if selected in item_keys else None,
        ),
        lib.heat_pick: gr.update(choices=view.fitting_choices(), value=heat_value),
    }


def apply_share_params(
    ctx: AppContext, st: steer.SteerTab, view: CatalogView, params: dict[str, str]
) -> tuple[dict, str | None]:
    """Widget updates for a share link (``?prompt=...&persona=...&layer=...``, every key in
    ``steer.SHARE_KEYS``) and the persona key to select.

    Each value is parsed and bounded like form input; a bad one falls back to the default, and
    the visitor is told which value was used instead.
    """
    if not set(steer.SHARE_KEYS) & params.keys():
        return {}, None
    limits = ctx.settings.limits
    n = ctx.model.n_layers
    out: dict[Any, Any] = {}

    def take(key: str, check: Any, fallback: str) -> Any:
        if key not in params:
            return None
        try:
            return check(params[key][:200] if key not in ("prompt", "system") else params[key])
        except InputError as exc:
            gr.Warning(f"Share link: {plain(exc)} Using {plain(fallback)} instead.")
            return None

    def text(what: str) -> Any:
        return lambda v: check_text(v, what, limits.max_prompt_chars, required=False)

    def readout(v: str) -> int:
        return AUTO_READOUT if v.strip() == str(AUTO_READOUT) else check_layer(v, n, "Read-out")

    simple = (
        ("prompt", st.prompt, text("prompt"), "the default prompt"),
        ("system", st.system, text("system prompt"), "no system prompt"),
        ("positions", st.positions, check_positions, "every token"),
        ("max_new_tokens", st.max_new_tokens, lambda v: check_max_new_tokens(v, limits), "48"),
        ("temperature", st.temperature, lambda v: check_temperature(v, limits), "the default"),
        ("frequency_penalty", st.frequency_penalty, check_penalty, "the default"),
        ("seed", st.seed, check_seed, "0"),
        ("readout", st.readout, readout, "the layer after the injection"),
    )
    for key, component, check, fallback in simple:
        value = take(key, check, fallback)
        if value is not None:
            out[component] = value
    item = take("persona", view.resolve, "the default persona")
    if item is None:
        key = view.default_key(ctx.settings.default_persona)
        item = view.resolve(key) if key else None
    recorded = "the persona's recommended one"
    layer = take("layer", lambda v: check_layer(v, n), recorded)
    strength = take("strength", lambda v: check_strength(v, limits), recorded)
    out |= st.controls_for(ctx, item, view, layer, strength)
    return out, item.key if item else None
