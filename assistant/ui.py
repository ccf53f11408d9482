"""The web UI: `build_ui(runtime) -> gradio.Blocks` with three tabs (Chat, Learning, Versions).

Nothing is launched here: `assistant.server` mounts the Blocks on its FastAPI app. This module
only lays out components and wires events to plain handler functions (ui_chat,
ui_conversations, ui_learning, ui_versions), which tests call directly. Per-browser state
lives in gr.State, so two browsers chatting at once never see each other's conversation.
"""
import functools
import inspect

import gradio as gr

from assistant import configure, importer, ui_knows, ui_learning, ui_versions
from assistant.config import MAX_TEMPERATURE
from assistant.ui_chat import REPLACE_LABEL, SELECT_HINT, feedback_values, new_session
from assistant.ui_conversations import ChatTab
from store import open_db

# One-click reasons for 👎 right on the message (free text goes in the feedback panel).
FEEDBACK_OPTIONS = ("Like", "Dislike", "Wrong facts", "Not what I asked", "Too long")
CHAT_LIMIT = 4  # concurrent chat streams; the model lock serialises the actual generation
# assistant.server passes these to gradio.mount_gradio_app (Gradio 6 takes css there, not in Blocks).
# - Table headers break between words only: narrow number columns otherwise wrap letter by letter.
# - A note (a message with a title: recalled corrections, "message cut", the user's correction)
#   is not an answer: no like/retry/edit buttons of its own (the row after it holds them).
# - The ✎ edit box: Gradio sizes it to the message's width (~160 px for a short answer), too
#   narrow to edit a long one; it takes the chat's width and a few lines instead.
CSS = """
.table-wrap th, .table-wrap th * {word-break: keep-all; overflow-wrap: normal;}
#chatbot .message-row:has(.thought-group) + .message-buttons {display: none !important;}
#chatbot .message-row:has(textarea.edit-textarea), #chatbot .message-row:has(textarea.edit-textarea) .flex-wrap,
#chatbot .message-row:has(textarea.edit-textarea) .flex-wrap > div, #chatbot .message:has(> textarea.edit-textarea)
  {width: 100% !important; max-width: 100% !important;}
#chatbot textarea.edit-textarea {width: 100% !important; min-height: 8em !important; field-sizing: content;}
"""
MOUNT_OPTIONS = {"css": CSS}


def build_ui(runtime) -> gr.Blocks:
    # Open (and migrate) the database here, once: handlers run on worker threads, each with its
    # own connection, and two of them must not be the first to migrate a fresh database.
    open_db(runtime.cfg.db_path).conn.close()
    chat = ChatTab(runtime)
    with gr.Blocks(title="Personal assistant", analytics_enabled=False) as ui:  # see assistant/__init__.py
        gr.Markdown("## Personal assistant — it learns from your feedback")
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                _chat_tab(ui, chat)
            with gr.Tab("Learning", id="learning"):
                _learning_tab(ui, runtime)
            with gr.Tab("Versions", id="versions") as versions_tab:
                _versions_tab(runtime, versions_tab)
            with gr.Tab("What it knows about me", id="knows") as knows_tab:
                _knows_tab(ui, runtime, knows_tab)
    return ui


def _chat_tab(ui: gr.Blocks, chat: ChatTab) -> None:
    session = gr.State(new_session())
    with gr.Row():
        with gr.Column(scale=1, min_width=230):
            new_btn = gr.Button("+ New chat", variant="secondary", elem_id="new-chat")
            # The current chat's controls above the list: a long list must not push Delete out of sight.
            title = gr.Textbox(label="Title", placeholder="Rename this chat", elem_id="title")
            with gr.Row():
                rename_btn = gr.Button("Rename", size="sm", elem_id="rename")
                delete_btn = gr.Button("Delete", size="sm", variant="stop", elem_id="delete")
            confirm_delete = gr.Button("Really delete this chat?", size="sm", variant="stop",
                                       visible=False, elem_id="confirm-delete")
            no_learn = gr.Checkbox(label="Don't learn from this conversation", elem_id="no-learn")
            convs = gr.Radio(label="Conversations", choices=[], elem_id="conversations")
            with gr.Accordion("From the API", open=False, visible=False, elem_id="api-calls") as api_box:
                api_convs = gr.Radio(show_label=False, choices=[], elem_id="api-conversations")
        with gr.Column(scale=4):
            chatbot = gr.Chatbot(label="Chat", height=460, editable="all", elem_id="chatbot",
                                 feedback_options=FEEDBACK_OPTIONS, group_consecutive_messages=False,
                                 placeholder="Ask anything. Then rate, correct (✎) or retry (↻) any answer.")
            with gr.Row():
                msg = gr.Textbox(show_label=False, placeholder="Type a message and press Enter",
                                 scale=5, elem_id="message", autofocus=True)
                send_btn = gr.Button("Send", variant="primary", scale=1, elem_id="send")
            notice = gr.Markdown("", elem_id="notice")
            with gr.Accordion("Feedback on an answer", open=True, elem_id="feedback"):
                target = gr.Markdown(SELECT_HINT, elem_id="feedback-target")
                with gr.Row():
                    up_btn = gr.Button("Good answer", size="sm", elem_id="fb-up")
                    reason = gr.Textbox(show_label=False, placeholder="What was wrong? (optional)",
                                        scale=3, elem_id="fb-reason")
                    down_btn = gr.Button("Bad answer", size="sm", elem_id="fb-down")
                    retry_btn = gr.Button("↻ Retry", size="sm", elem_id="fb-retry")
                correction = gr.Textbox(label="Correct it: what should the answer have said?", lines=3, max_lines=8,
                                        elem_id="fb-correction")
                correct_btn = gr.Button("✎ Save correction", size="sm", variant="primary",
                                        elem_id="fb-correct")
                replace_btn = gr.Button(REPLACE_LABEL, size="sm", visible=False, elem_id="fb-replaces")
            with gr.Accordion("Settings", open=False, elem_id="settings"):
                system = gr.Textbox(label="System prompt (the assistant's standing instructions)",
                                    value=chat.default_system_prompt, lines=3, elem_id="system-prompt")
                with gr.Row():
                    save_default = gr.Button("Save as default", size="sm")
                    save_chat = gr.Button("Use for this chat only", size="sm")
                cfg = chat.rt.cfg
                max_new = gr.Slider(1, max(1024, cfg.default_max_new_tokens), value=cfg.default_max_new_tokens, step=1,
                                    label="Max new tokens", elem_id="max-new-tokens")
                temperature = gr.Slider(0.0, MAX_TEMPERATURE, value=cfg.default_temperature, step=0.05,
                                        label="Temperature (0 = always the same answer)", elem_id="temperature")
                recall = gr.Checkbox(value=cfg.recall, label="Recall past corrections", elem_id="recall")

    gen = [max_new, temperature, recall]
    _stored_settings(ui, chat.rt, gen, notice)
    stream_out = [msg, chatbot, session, notice, convs, target, correction]
    view_out = [chatbot, session, notice, convs, system, no_learn, title, target, correction]
    for trigger in (msg.submit, send_btn.click):
        trigger(_with_votes(chat.send, 1), [msg, chatbot, session, *gen], stream_out,
                concurrency_limit=CHAT_LIMIT, concurrency_id="chat", show_progress="minimal")
    chatbot.retry(_with_votes(_on_retry(chat), 1), [chatbot, session, *gen], stream_out,
                  concurrency_limit=CHAT_LIMIT, concurrency_id="chat")
    retry_btn.click(_with_votes(chat.retry, 1), [chatbot, session, *gen], stream_out,
                    concurrency_limit=CHAT_LIMIT, concurrency_id="chat")
    chatbot.like(chat.on_like, [session], [session, notice, target, correction])
    chatbot.select(chat.on_select, [session], [session, target, correction])
    # an earlier correction offered as "may replace": the button shows until used or the next correction
    offer = (lambda s: gr.update(visible=bool((s or {}).get("may_replace"))), [session], [replace_btn])
    chatbot.edit(_with_votes(chat.on_edit, 0), [chatbot, session], [chatbot, session, notice]).then(*offer)
    chatbot.clear(_with_votes(chat.new_chat, 0), [session], view_out)

    def panel_vote(history, session, kind, why=""):  # the panel's buttons also light the thumbs
        session, said = chat.vote(session, kind, why)
        return gr.update(value=history, feedback_value=feedback_values(history, session)), session, said

    up_btn.click(lambda h, s: panel_vote(h, s, "up"), [chatbot, session], [chatbot, session, notice])
    down_btn.click(lambda h, s, r: panel_vote(h, s, "down", r), [chatbot, session, reason],
                   [chatbot, session, notice]).then(lambda: "", None, reason)
    correct_btn.click(_with_votes(chat.correct, 0), [chatbot, session, correction], [chatbot, session, notice]).then(*offer)
    replace_btn.click(chat.confirm_replace, [session], [session, notice]).then(*offer)
    no_learn.input(chat.set_no_learn, [session, no_learn], [session, notice])

    new_btn.click(_with_votes(chat.new_chat, 0), [session], view_out)
    convs.input(_with_votes(chat.resume, 0), [convs, session], view_out)
    rename_btn.click(chat.rename, [session, title], [notice, convs])
    title.submit(chat.rename, [session, title], [notice, convs])
    delete_btn.click(lambda: gr.update(visible=True), None, confirm_delete)
    confirm_delete.click(_with_votes(chat.delete, 0), [session], view_out).then(
        lambda: gr.update(visible=False), None, confirm_delete)
    save_default.click(lambda s, t: chat.save_system_prompt(s, t, "default"), [session, system],
                       [session, notice])
    save_chat.click(lambda s, t: chat.save_system_prompt(s, t, "chat"), [session, system],
                    [session, notice])
    ui.load(lambda: chat.conversation_list(None), None, convs)
    ui.load(chat.api_conversations, None, [api_convs, api_box])
    new_btn.click(chat.api_conversations, None, [api_convs, api_box])
    api_convs.input(_with_votes(chat.resume, 0), [api_convs, session], view_out)


def _stored_settings(ui: gr.Blocks, runtime, gen: list, notice) -> None:
    """The chat's generation settings stay: each change is stored (configure.CHAT_FIELDS, in
    that order), and a page load shows the stored ones, not those the page was built with."""
    for widget, name in zip(gen, configure.CHAT_FIELDS, strict=True):
        event = widget.input if isinstance(widget, gr.Checkbox) else widget.release
        event(functools.partial(configure.save_chat_setting, runtime, name), widget, notice,
              show_progress="hidden")

    def load():
        tokens, temp, recall = configure.chat_values(runtime)
        return gr.update(value=tokens, maximum=max(1024, tokens)), temp, recall

    ui.load(load, None, gen)


def _with_votes(handler, at: int):
    """`handler` with its chatbot output (position `at`, the session right after it) sent with
    the thumbs given so far: Gradio clears them whenever the messages change."""
    def shown(out):
        out = list(out)
        if isinstance(out[at], list):
            out[at] = gr.update(value=out[at], feedback_value=feedback_values(out[at], out[at + 1]))
        return tuple(out)

    if inspect.isgeneratorfunction(handler):
        @functools.wraps(handler)  # keeps the signature: Gradio injects event data by type hint
        def streaming(*args):
            for out in handler(*args):
                yield shown(out)
        return streaming

    @functools.wraps(handler)
    def plain(*args):
        return shown(handler(*args))
    return plain


def _on_retry(chat: ChatTab):
    """The chatbot's own ↻ button: regenerate the turn of the message it was pressed on."""
    def on_retry(history, session, max_new_tokens, temperature, recall, evt: gr.RetryData):
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        ids = (session or {}).get("turn_ids") or []
        turn_id = ids[i] if 0 <= i < len(ids) else None
        yield from chat.retry(history, session, max_new_tokens, temperature, recall, turn_id=turn_id)
    return on_retry


def _learning_tab(ui: gr.Blocks, runtime) -> None:
    gr.Markdown("The assistant trains a new adapter from your feedback in the background; "
                "it goes live only if it passes the gate (see Versions).")
    with gr.Row():
        learn_btn = gr.Button("Learn now", variant="primary", elem_id="learn-now")
        cancel_btn = gr.Button("Cancel", variant="stop", visible=False, elem_id="learn-cancel")
    message = gr.Markdown("", elem_id="learn-message")
    stage = gr.Markdown("", elem_id="learn-stage")
    bar = gr.HTML("", elem_id="learn-progress")
    # matplotlib, not gr.LinePlot: LinePlot keeps the colour legend of its first data, so DPO
    # steps arriving after SFT ones would not be drawn.
    losses = gr.Plot(label="Training loss", format="png", elem_id="learn-losses")
    timer = gr.Timer(2.0)
    status_out = [stage, bar, losses, cancel_btn]
    refresh = lambda: ui_learning.status_view(runtime)  # noqa: E731
    learn_btn.click(lambda: ui_learning.learn_now(runtime), None, message).then(refresh, None, status_out)
    cancel_btn.click(lambda: ui_learning.cancel(runtime), None, message).then(refresh, None, status_out)
    # Polling, not pushing: the learner is another process and writes its progress to the jobs table.
    timer.tick(refresh, None, status_out, show_progress="hidden", queue=False)
    ui.load(refresh, None, status_out)
    with gr.Accordion("Schedule and gate", open=False, elem_id="learn-settings"):
        gr.Markdown("When a cycle starts by itself, and what a new version must show to go live. "
                    "Also `assistant config show` / `assistant config set KEY VALUE`.")
        boxes = [gr.Number(label=f"{section}.{name}", info=configure.summary(configure.SECTIONS[section].cls, name),
                           elem_id=f"setting-{section}-{name}".replace("_", "-"))
                 for section, name in configure.PAGE_FIELDS]
        save_btn = gr.Button("Save schedule and gate", size="sm", elem_id="learn-settings-save")
        saved = gr.Markdown("", elem_id="learn-settings-notice")
    db = lambda: runtime.db  # noqa: E731 - one connection per handler thread
    save_btn.click(lambda *v: configure.save_page(db(), *v), boxes, saved) \
        .then(lambda: configure.page_values(db()), None, boxes)
    ui.load(lambda: configure.page_values(db()), None, boxes)


def _versions_tab(runtime, tab) -> None:
    plot_path = runtime.cfg.home / "ui" / "metrics.png"
    with gr.Row():
        notice = gr.Markdown("", elem_id="versions-notice")
        refresh_btn = gr.Button("↻ Refresh", size="sm", scale=0, min_width=120)
    v = {"notice": notice}  # the components ui_versions.view updates, by name
    v["empty"] = gr.Markdown(ui_versions.NO_VERSIONS, elem_id="versions-empty")
    v["table"] = gr.Dataframe(label="Adapter versions", interactive=False, wrap=True, visible=False,
                              elem_id="versions-table")
    v["plot"] = gr.Image(label="Metrics across versions", type="filepath", interactive=False, height=320,
                         visible=False)
    with gr.Row():
        with gr.Column():
            v["promote_none"] = gr.Markdown("", visible=False, elem_id="promote-none")
            with gr.Column(visible=False, elem_id="promote-box") as v["promote_box"]:
                v["promote"] = gr.Dropdown(label="Promote a version", choices=[], elem_id="promote-pick")
                promote_btn = gr.Button("Promote", variant="primary")
                with gr.Row(visible=False) as confirm_row:
                    force_btn = gr.Button("Yes, promote despite the gate", variant="stop")
                    no_btn = gr.Button("No")
        with gr.Column():
            v["rollback_none"] = gr.Markdown("", visible=False, elem_id="rollback-none")
            with gr.Column(visible=False, elem_id="rollback-box") as v["rollback_box"]:
                v["rollback"] = gr.Dropdown(label="Roll back to", choices=[], elem_id="rollback-pick")
                quarantine = gr.Checkbox(label="Quarantine the feedback that trained the current version")
                rollback_btn = gr.Button("↩ Roll back", variant="stop")
    with gr.Accordion("Compare a version with the active one", open=False):
        with gr.Row():
            v["compare"] = compare_a = gr.Dropdown(label="Version", choices=[])
            compare_b = gr.Dropdown(label="Against (empty: the active version)", choices=[])
        v["prompts"] = gr.Textbox(label="Prompts (one per line; recent ones prefilled)", lines=4)
        compare_btn = gr.Button("Compare")
        compare_table = gr.Dataframe(interactive=False, wrap=True, visible=False, elem_id="compare-table")
    v["no_corrections"] = gr.Markdown(ui_versions.NO_CORRECTIONS)
    v["corrections"] = gr.Dataframe(label="My corrections", interactive=False, wrap=True, visible=False,
                                    elem_id="corrections-table")

    names = list(v)
    view_out = [v[n] for n in names] + [compare_b]
    # after an action: keep its message and the user's prompts
    data_names = [n for n in names if n not in ("notice", "prompts")]
    data_out = [v[n] for n in data_names] + [compare_b]

    def refresh():
        parts = ui_versions.view(runtime, plot_path)
        return [parts[n] for n in names] + [parts["compare"]]

    def after():
        parts = ui_versions.view(runtime, plot_path)
        return [parts[n] for n in data_names] + [parts["compare"]]

    promote_pick, rollback_pick = v["promote"], v["rollback"]
    for trigger in (refresh_btn.click, tab.select):
        trigger(refresh, None, view_out)
    promote_btn.click(lambda p: ui_versions.promote(runtime, p), [promote_pick], [notice, confirm_row]) \
        .then(after, None, data_out)
    force_btn.click(lambda p: ui_versions.promote(runtime, p, confirmed=True), [promote_pick],
                    [notice, confirm_row]).then(after, None, data_out)
    no_btn.click(lambda: ("Promotion cancelled.", gr.update(visible=False)), None, [notice, confirm_row])
    rollback_btn.click(lambda p, q: ui_versions.rollback(runtime, p, q), [rollback_pick, quarantine],
                       notice).then(after, None, data_out)
    compare_btn.click(lambda a, b, p: ui_versions.compare(runtime, a, b, p), [compare_a, compare_b, v["prompts"]],
                      [compare_table, notice])


def _knows_tab(ui: gr.Blocks, runtime, tab) -> None:
    gr.Markdown("Everything the assistant learns from: your corrections and the answers you liked, "
                "newest first, and what became of each.")
    # The browser's time zone, read once on load: times are shown as the user's clock shows them.
    tz = gr.Textbox(visible=False, elem_id="knows-tz")
    search = gr.Textbox(show_label=False, placeholder="Search what it knows", elem_id="knows-search")
    k = {"summary": gr.Markdown("", elem_id="knows-summary"),
         "empty": gr.Markdown(ui_knows.EMPTY, elem_id="knows-empty"),
         "table": gr.Dataframe(interactive=False, wrap=True, visible=False, elem_id="knows-table")}
    with gr.Row():
        k["pick"] = gr.Dropdown(label="Choose an item to edit or forget", choices=[], scale=3, elem_id="knows-pick")
        forget_btn = gr.Button("Forget this item", variant="stop", scale=1, elem_id="knows-forget")
        forget_conv_btn = gr.Button("Forget its whole conversation", variant="stop", scale=1,
                                    elem_id="knows-forget-conversation")
    with gr.Row():
        edit_box = gr.Textbox(label="What it should answer (edit, then save)", lines=2, scale=4,
                              elem_id="knows-edit")
        edit_btn = gr.Button("Save the edit", scale=1, elem_id="knows-save-edit")
    notice = gr.Markdown("", elem_id="knows-notice")
    with gr.Accordion("Import what you already have", open=False, elem_id="knows-import-box"):
        gr.Markdown("TRL conversational SFT or preference JSONL, or an Open WebUI feedback export (.json): "
                    "each liked answer, dislike and correction in it is logged as your feedback; "
                    "importing a file twice adds nothing. Also `assistant import FILE`.")
        upload = gr.File(label="File", file_types=[".jsonl", ".json"], type="filepath", elem_id="knows-import-file")
        import_btn = gr.Button("Import", elem_id="knows-import")
        imported = gr.Markdown("", elem_id="knows-import-notice")
    with gr.Accordion("Details (ids)", open=False):
        k["details"] = gr.Dataframe(interactive=False, wrap=True, visible=False, elem_id="knows-details")
    names = list(k)

    def refresh(query, zone):
        parts = ui_knows.view(runtime, query, zone)
        return [parts[n] for n in names]

    out = [k[n] for n in names]
    ui.load(None, None, tz, js="() => Intl.DateTimeFormat().resolvedOptions().timeZone")
    tab.select(refresh, [search, tz], out)
    search.change(refresh, [search, tz], out, show_progress="hidden")
    forget_btn.click(lambda f: ui_knows.forget(runtime, f), k["pick"], notice).then(refresh, [search, tz], out)
    k["pick"].change(lambda f: ui_knows.answer_of(runtime, f), k["pick"], edit_box)
    edit_btn.click(lambda f, t: ui_knows.edit(runtime, f, t), [k["pick"], edit_box], notice) \
        .then(refresh, [search, tz], out)
    forget_conv_btn.click(lambda f: ui_knows.forget_conversation(runtime, f), k["pick"], notice) \
        .then(refresh, [search, tz], out)
    import_btn.click(lambda path: importer.import_into(runtime, path), upload, imported) \
        .then(refresh, [search, tz], out)
