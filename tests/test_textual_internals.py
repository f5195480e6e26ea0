"""The private Textual names the dashboard relies on exist, and it uses no others by accident.

Textual's minor version is pinned in pyproject.toml because of these: a private name can change in
any release. When the pin moves, this test says what to look at."""

from __future__ import annotations

import asyncio
import importlib
import inspect
import io
import pkgutil
import re

import corral.tui
from textual.app import App
from textual.reactive import Reactive
from textual.drivers._writer_thread import WriterThread
from textual.drivers.linux_driver import LinuxDriver
from textual.dom import DOMNode
from textual.screen import Screen
from textual.widgets import Log

#: (class of corral's, private name of its Textual base) that it overrides or sets on purpose
INTENDED = {
    ("QuietLog", "_update_size"),  # measures line widths inline instead of in a thread worker
    ("PaneLog", "_update_size"),  # measures nothing: a pane never scrolls sideways
    ("RunScreen", "_screen_resized"),  # no layout when a screen pushed over it (a zoom) did not resize it
    ("CorralApp", "_loop"),  # the running loop, as Textual's own (the SIGHUP handler needs it early)
    ("PaneHead", "_get_component_classes"),  # only the components it shows now: its status's, not all 11
    ("ZoomScreen", "_layout_required"),  # laid out ahead of its first push: no layout left for the push
    ("RunScreen", "_compositor"),  # a DirtyOnlyCompositor: partial updates render only what changed
    ("DirtyOnlyCompositor", "_get_renders"),  # ... of the widgets that overlap a region to update
}


def params(fn: object) -> list[str]:
    return list(inspect.signature(fn).parameters)  # type: ignore[arg-type]


def test_the_private_textual_names_the_dashboard_uses_exist() -> None:
    # QuietLog (tui/widgets.py) overrides Log._update_size and calls the two helpers it used
    assert params(Log._update_size) == ["self", "updates", "lines"]
    assert params(Log._update_maximum_width) == ["self", "updates", "size"]
    assert params(Log._process_line) == ["line"]
    # FitFooter (tui/widgets.py) overrides Footer.bindings_changed, reading Screen.active_bindings
    from textual.widgets import Footer

    assert params(Footer.bindings_changed) == ["self", "screen"]
    assert "active_bindings" in dir(Screen)
    # ... and restyles a FooterKey in place (textual.widgets._footer): its key, action and the
    # _disabled its click checks
    from textual.widgets._footer import FooterKey

    footer_key = FooterKey("a", "a", "abort", "abort", disabled=True)
    assert (footer_key.key, footer_key.action, footer_key._disabled) == ("a", "abort", True)
    assert footer_key.has_class("-disabled")
    # ... and makes a key compact or not as it is made (FitFooter.compose): the reactive its
    # footer binds, and the class its watcher sets
    assert isinstance(FooterKey.__dict__["compact"], Reactive) and FooterKey.compact._default is True
    assert FooterKey("b", "b", "", "b")._reactive_connect is None  # and data_bind fills it:
    assert "self._reactive_connect[name]" in inspect.getsource(DOMNode.data_bind)
    assert '"-compact"' in inspect.getsource(FooterKey._watch_compact)
    # PaneHead (tui/widgets.py) tells the stylesheet which of its components to style: the
    # stylesheet asks the node (an instance's override is seen), and get_component_styles reads them
    from textual.css.stylesheet import Stylesheet

    assert "node._get_component_classes()" in inspect.getsource(Stylesheet._process_component_classes)
    assert params(DOMNode._get_component_classes) == []  # a cached classmethod, called without arguments
    # CorralApp.on_event (tui/dashboard.py) looks up the bindings of a key for a focused pane where
    # it arrives, as App.on_event does for the priority ones before it hands the key to the focused
    # widget, and App._on_key once it has bubbled up to the app: App._check_bindings, from the
    # focused widget up
    assert params(App._check_bindings) == ["self", "key", "priority"]
    assert "self._check_bindings(event.key, priority=True)" in inspect.getsource(App.on_event)
    assert "forward_target = self.focused or self.screen" in inspect.getsource(App.on_event)
    assert "self._check_bindings(event.key)" in inspect.getsource(App._on_key)
    # RunScreen (tui/run_screen.py) lays itself out only when a screen pushed over it resized it
    assert params(Screen._screen_resized) == ["self", "size"]
    # ZoomScreen (tui/run_screen.py) is restyled at a push only when App._css_update_count moved
    # (App._invalidate_css: a new theme), through the ScreenResume's refresh_styles that
    # Screen._on_screen_resume reads after the screen's own handler
    assert "self._css_update_count += 1" in inspect.getsource(App._invalidate_css)
    assert "event.refresh_styles" in inspect.getsource(Screen._on_screen_resume)
    # RunScreen makes the zoom screen ahead of the first zoom (tui/run_screen.py): App._get_screen
    # registers an installed screen (composed and mounted, as a push does), then ZoomScreen.settle_ahead
    # lays it out off the stack with Screen._refresh_layout, clears the Screen._layout_required its
    # widgets' Layout messages set (with Screen._layout_widgets, what they asked for) and renders it
    # once through Screen._compositor; a screen that is not current has no frames of its own
    assert params(App._get_screen) == ["self", "screen"]
    assert "self._register(self, _screen)" in inspect.getsource(App._get_screen)
    assert params(Screen._refresh_layout) == ["self", "size", "scroll"]
    assert "self._layout_required = True" in inspect.getsource(Screen._on_layout)
    assert "self._layout_widgets[ancestor]" in inspect.getsource(Screen._on_layout)
    from textual._compositor import Compositor

    assert params(Compositor.render_update) == ["self", "full", "screen_stack", "simplify"]
    # DirtyOnlyCompositor (tui/run_screen.py) replaces the Screen's compositor and narrows the
    # widgets a partial update renders: Compositor._get_renders, which _render_chops asks for the
    # renders of the rectangle around Compositor._dirty_regions, which render_partial_update reads
    assert "self._compositor = Compositor()" in inspect.getsource(Screen.__init__)
    assert params(Compositor._get_renders) == ["self", "crop"]
    assert "renders = self._get_renders(crop)" in inspect.getsource(Compositor._render_chops)
    assert "update_regions = self._dirty_regions.copy()" in inspect.getsource(Compositor.render_partial_update)
    assert "self._render_chops(crop, is_rendered_line)" in inspect.getsource(Compositor.render_partial_update)
    # draw_now (tui/run_screen.py) makes a pushed or uncovered screen's frame at once, as the
    # screen's update timer would (Screen._on_timer_update: a layout if due, then what is dirty), when
    # the app holds no batch of updates (App._batch_count); Screen.refresh marks the whole screen
    source = inspect.getsource(Screen._on_timer_update)
    assert params(Screen._on_timer_update) == ["self"]
    assert "if self.is_current and not self.app._batch_count:" in source
    assert "self._compositor_refresh()" in source and "if self._repaint_required:" in source
    assert App()._batch_count == 0
    # the SIGHUP handler (tui/dashboard.py) silences the driver: App._driver, the Linux driver's
    # writer thread and that thread's queue; and it reaches the loop through App._loop
    app = App()
    assert app._driver is None and app._loop is None and app._css_update_count == 0

    async def driver() -> LinuxDriver:
        return LinuxDriver(app)

    assert asyncio.run(driver())._writer_thread is None
    assert WriterThread(io.StringIO())._queue.maxsize > 0


def test_no_class_of_the_dashboard_reuses_a_private_textual_name_by_accident() -> None:
    """CorralApp once had a ``_flush`` of its own: Textual calls ``App._flush(stderr=...)`` whenever
    something flushes stdout while the app runs, and got a TypeError."""
    found = set()
    for info in pkgutil.iter_modules(corral.tui.__path__):
        module = importlib.import_module(f"corral.tui.{info.name}")
        for cls in vars(module).values():
            if not inspect.isclass(cls) or cls.__module__ != module.__name__:
                continue
            textual_bases = [b for b in cls.__mro__[1:] if b.__module__.split(".")[0] == "textual"]
            if not textual_bases:
                continue
            source = inspect.getsource(cls)
            names = set(re.findall(r"^\s+(?:async )?def (_[a-z]\w*)", source, re.M))
            names |= set(re.findall(r"self\.(_[a-z]\w*)\s*(?::[^=\n]*)?=[^=]", source))
            names |= set(re.findall(r"^    (_[a-z]\w*)\s*(?::[^=\n]*)?=", source, re.M))
            base_instance_names = _instance_names(textual_bases[0])
            for name in names:
                if any(name in vars(b) for b in textual_bases) or name in base_instance_names:
                    found.add((cls.__name__, name))
    assert found == INTENDED


def _instance_names(base: type) -> set[str]:
    """The attributes a bare instance of a Textual class sets in its ``__init__``."""
    try:
        return set(vars(base()))
    except Exception:  # a class that needs arguments: its class attributes are checked anyway
        return set()
