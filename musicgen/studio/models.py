"""The studio's models in memory: one at a time, loaded on demand, each with the scheduler that runs its
requests. A request leases the model it runs on for the whole run, so a switch to another model (another
visitor's request) waits for every lease to end and never closes a scheduler under a request it was handed."""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Callable, Iterator

import torch

from ..pipeline import MusicGen, default_device
from ..serve import Scheduler

Engine = MusicGen | Scheduler  # what runs a request's generation: the model's scheduler, or the model itself


class ModelCache:
    """One model in memory at a time, loaded on demand; switching frees the previous one first, so peak memory
    is one model (plus whatever a cancelled run still holds until it stops). With `batch_rows`, the model's
    requests share decode steps through a `serve.Scheduler` of that many rows.

    `lease(repo)` hands a request (the model, its engine) for the whole run. A request for another model waits
    until every lease of the current one has ended (requests already running finish, and those handed the model
    but not yet in its scheduler get in and finish too); while it waits, new requests wait behind it (first
    come, first served per switch), then the model is switched."""

    def __init__(self, loader: Callable[[str], MusicGen] | None = None, device: str | None = None,
                 batch_rows: int = 0, threads: int | None = None, **load_kwargs: object) -> None:
        self.device = torch.device(device) if device is not None else default_device()
        self._loader = loader or (lambda repo: MusicGen.from_pretrained(repo, device=self.device, **load_kwargs))
        self._cond = threading.Condition()  # guards everything below
        self._repo: str | None = None
        self._model: MusicGen | None = None
        self._leases = 0  # runs holding the current model
        self._switching = False  # a request for another model waits for the leases to end
        # every model's scheduler gets the same decode-loop threads, counted here: a scheduler made later, in a
        # request's thread, would count that thread's (1, once a scheduler ran: serve.own_intra_op_threads), and a
        # matrix product's last bits (T5's, EnCodec's) depend on the count
        self.batch_rows, self.threads = batch_rows, threads or torch.get_num_threads()
        self._scheduler: Scheduler | None = None

    @property
    def current(self) -> str | None:
        return self._repo

    @property
    def leases(self) -> int:
        return self._leases

    def get(self, repo: str, on_load: Callable[[str], None] | None = None) -> MusicGen:
        """The model for `repo`, loading it (and calling `on_load(repo)` first) unless it is the current one.
        Not leased: the caller must not rely on it staying loaded (use `lease` to run on it)."""
        with self._cond:
            return self._ensure(repo, on_load)

    @contextlib.contextmanager
    def lease(self, repo: str, on_load: Callable[[str], None] | None = None) -> Iterator[tuple[MusicGen, Engine]]:
        """(the model, what runs its generations: its scheduler with `batch_rows`, else the model itself), kept
        loaded and open until the block ends."""
        with self._cond:
            mg = self._ensure(repo, on_load)
            if not self.batch_rows:
                engine: Engine = mg
            else:
                if self._scheduler is None or self._scheduler.mg is not mg:
                    self._scheduler = Scheduler(mg, self.batch_rows, self.threads)
                engine = self._scheduler
            self._leases += 1
        try:
            yield mg, engine
        finally:
            with self._cond:
                self._leases -= 1
                self._cond.notify_all()

    def free(self) -> None:
        with self._cond:
            self._wait_for_leases()
            self._free_locked()

    def _ensure(self, repo: str, on_load: Callable[[str], None] | None) -> MusicGen:
        """Under the lock: the model for `repo`, switching to it once no lease holds the current one."""
        while self._switching:  # another switch is waiting: get in line behind it
            self._cond.wait()
        if self._model is not None and self._repo == repo:
            return self._model
        self._wait_for_leases()
        self._free_locked()
        if on_load is not None:
            on_load(repo)
        model = self._loader(repo)
        self._model, self._repo = model, repo
        return model

    def _wait_for_leases(self) -> None:
        self._switching = True
        try:
            while self._leases:
                self._cond.wait()
        finally:
            self._switching = False
            self._cond.notify_all()

    def _free_locked(self) -> None:
        if self._scheduler is not None:  # no lease: nothing runs on it any more
            self._scheduler.close()
            self._scheduler = None
        if self._model is None:
            return
        self._model, self._repo = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
