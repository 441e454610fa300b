# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state machine of vllm_container: plan, pre-check, act (or, in check mode, only plan), wait, roll back.

The plan is computed the same way in check mode and in a real run (``Deployment.run``); check mode records the
actions it would take and stops before each engine call, so the two can never disagree about ``changed``. Its
pieces live beside it in this package: the image step
(``pull.py``), the declared container resolved against the image (``desired.py``), the pre-checks
(``prechecks.py``), and what the engine is asked to create (``create.py``: manifest, labels, CreateSpec).
"""

from __future__ import annotations

import datetime
import os
import time
from collections.abc import Callable, Collection
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import create, lock, pull, warm
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import desired as ds
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import lifecycle as lc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import manifest as mf
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import prechecks as pc
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.validate import name_problem
from ansible_collections.gpufleet.vllm.plugins.module_utils._duration import parse_duration
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import (
    ContainerState,
    CreateSpec,
    ImageInfo,
    Runtime,
    parse_time,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._utc import stamp_or_none

# Imported where used, not here, so that a no-op converge (label hash equal -> changed false) never loads them:
# gpu facts (NVML / nvidia-smi, for the GPU pre-checks), vllm_args and its flag tables (argv mapping and validation),
# image_ref (pull). AnsiballZ still ships them: it follows imports inside functions too.


class Deployment:
    def __init__(
        self,
        params: dict[str, Any],
        runtime: Runtime,
        check_mode: bool = False,
        warn: Callable[[str], None] | None = None,
        gpu_facts_fn: Callable[[], tuple[list[dict[str, Any]] | None, str | None]] = pc.gpu_facts,
        explicit: Collection[str] | None = None,
    ) -> None:
        """``params``: vllm_container's parameters (argument_spec(), defaults applied). With ``from_manifest`` set,
        the manifest is read and merged here (manifest.apply_manifest; ``explicit`` names the parameters the caller
        set); the ``runtime`` adapter must then be the one of the merged parameters."""
        self.warn = warn or (lambda msg: None)
        if params.get("from_manifest"):
            params, warnings = mf.apply_manifest(params, explicit)
            for w in warnings:
                self.warn(w)
            if runtime.name in ("docker", "podman") and params.get("runtime") not in (None, runtime.name):
                raise GpufleetError(
                    f"from_manifest gives runtime {params['runtime']} but the engine adapter is {runtime.name}; "
                    "merge the manifest first (manifest.apply_manifest) and build the adapter from the result"
                )
        if not params.get("name"):
            raise GpufleetError("name is required (or from_manifest, whose deployment name is then used)")
        bad_name = name_problem(params["name"])  # it becomes file names: the manifest, the compile cache, the lock
        if bad_name:
            raise GpufleetError(bad_name, failure_class="bad_args")
        self.p = params
        self.rt = runtime
        self.check_mode = check_mode
        self.gpus = pc.GpuFacts(gpu_facts_fn, self.warn)  # gathered on first use by a GPU pre-check
        self.name = params["name"]
        self.cname = lb.container_name(self.name)
        self.pname = lb.previous_name(self.name)
        self.result: dict[str, Any] = {"changed": False, "actions": [], "container_name": self.cname}
        self.secrets = [v for v in [params.get("api_key"), params.get("hf_token")] if v]
        self.secrets += [str(v) for v in (params.get("secret_env") or {}).values() if v not in (None, "")]
        self.serve_for: datetime.timedelta | None = None  # parsed in run(), before anything is touched
        self.phases: list[str] = []  # pulling (this module) + the start-up phases the server's log showed
        self.desired: ds.Desired | None = None  # resolved in run() when image and model are given

    # ------------------------------------------------------------------------------------------------ helpers
    def _phase(self, phase: str) -> None:
        """Record a phase this run went through (result key ``phases``)."""
        rd.add_phase(self.phases, phase)
        self.result["phases"] = list(self.phases)

    def _act(self, action: str) -> None:
        self.result["actions"].append(action)
        self.result["changed"] = True

    @property
    def base(self) -> str:
        return rd.base_url(self.p.get("host"), self.p["port"])

    @property
    def want(self) -> ds.Desired:
        """The resolved Desired (only called on the paths that converge the declared configuration)."""
        if self.desired is None:  # internal invariant: run() resolves it before any state needs it
            raise RuntimeError("Deployment.desired is used before run() resolved it")
        return self.desired

    def _pull(self) -> ImageInfo | None:
        """Pull the absent image through the engine adapter (phase ``pulling``); nothing in check mode."""
        ref = self.p["image"]
        self._act(f"pull {ref}")
        self._phase("pulling")
        if self.check_mode:
            return None
        where = lock.state_dir(self.p["manifest_dir"]) if self.p.get("manifest_dir") else None
        return pull.pull(self.rt, ref, self.phases, where, self.result)

    def _prechecks(self, cur: ContainerState | None, starting: bool) -> None:
        """The argv against the image's vLLM flag table, then the pre-checks (prechecks.check): both before anything
        is created or started; a failure touches nothing."""
        ds.validate_argv(self.p, self.want, self.warn)
        pc.check(self.p, self.want.gpus, cur, starting, self.gpus, self.rt)

    # ------------------------------------------------------------------------------------------------ entry
    def run(self) -> dict[str, Any]:
        state = self.p["state"]
        by_name = not self.p.get("image") and not self.p.get("model")
        if state != "absent":
            # Checked before anything is touched (both are needed to converge the declared configuration).
            if by_name and state == "started":
                raise GpufleetError("image and model are required for state=started")
            if not by_name and not (self.p.get("image") and self.p.get("model")):
                raise GpufleetError(
                    "give image and model together (to converge the declared server), or neither (state stopped, "
                    "paused or restarted then act on the existing container by name)"
                )
            self.serve_for = parse_duration(self.p.get("serve_for"))
        cur = self.rt.container(self.cname)
        prev = self.rt.container(self.pname)
        if prev is not None:
            # Left over from an interrupted replacement: the new one exists -> drop the old; else restore the old.
            if cur is not None:
                self._act(f"remove leftover {self.pname}")
                if not self.check_mode:
                    self.rt.remove(prev.id)
            else:
                self._act(f"rename leftover {self.pname} back to {self.cname}")
                if not self.check_mode:
                    self.rt.rename(prev.id, self.cname)
                cur = prev
        if state == "absent":
            return self._absent(cur)
        if by_name:
            return self._by_name(cur)
        pc.host_warning(self.p, self.warn)
        if cs.gpus_of(self.p) == ["all"]:  # every GPU of the host, by index (desired.expand_all_gpus says why)
            self.p = ds.expand_all_gpus(self.p, self.gpus.get(), self.warn)
        img = pull.present(self.rt, self.p)
        if img is None:
            # pull: missing. The pre-checks that do not need the image run first: a pull can take long.
            pc.check(self.p, cs.gpus_of(self.p), cur, state != "stopped", self.gpus, self.rt)
            img = self._pull()
        mode, version = pull.model_mode(self.p, img)  # predicted from the tag in check mode before a pull
        want = self.desired = ds.resolve(self.p, img, mode, version, cur)
        cur_l = lb.parse(cur.labels) if cur else None
        same = bool(cur and cur_l and cur_l["config_hash"] == want.config_hash)
        self.result.update(
            config_hash=want.config_hash,
            spec=cs.masked_spec(want.spec),
            endpoint=self.base,
            vllm_version=version,
            argv=want.spec["argv"],
        )
        d = cs.diff(cur_l["spec"] if cur_l else None, want.spec)
        self.result["diff"] = {"before": d["before"], "after": d["after"]}
        self.result["changed_keys"] = d["changed_keys"] if not same else []
        if cur is not None and not same:
            self.result["changed_env_keys"] = cs.changed_env_keys(cur_l["spec"] if cur_l else None, want.spec)

        if self._lifecycle_holds(cur if same else None):
            return self.result
        if state == "stopped":
            self._stopped(cur, same)
        elif state == "restarted":
            if same and cur is not None:
                self._restart(cur)
            else:
                self._deploy(cur, start=True)
        else:  # started, paused
            if same and cur is not None:
                self._ensure_running(cur)
            else:
                self._deploy(cur, start=True)
            if state == "paused":
                self._pause()
        self._manifest(same, cur)
        self._lifecycle_write(cur)
        return self.result

    # ------------------------------------------------------------------------------------------------ lifecycle
    def _lifecycle_dir(self) -> str | None:
        return lock.state_dir(self.p["manifest_dir"]) if self.p.get("manifest_dir") else None

    def _lifecycle_converged(self, rec: lc.Record, cid: str, cur: ContainerState | None) -> None:
        """What this converge writes into the record (lifecycle.converge); a container without a record yet keeps
        the window of its old ``gpufleet.serve-until`` label."""
        hours = None if self.serve_for is None else self.serve_for.total_seconds() / 3600.0
        since = None
        label_until = parse_time(lb.parse(cur.labels)["serve_until"]) if cur is not None and cur.id == cid else None
        if label_until is not None and hours is not None:
            since = label_until - hours * 3600.0
        if self.p.get("reset_failed") or self.p["state"] == "restarted":
            rec.pop("failed", None)
        lc.converge(
            rec,
            container_id=cid,
            config_hash=self.want.config_hash,
            serve_for_h=hours,
            max_failed_restarts=self.p.get("max_failed_restarts", lc.DEFAULT_MAX_FAILED_RESTARTS),
            start_timeout_s=self.p.get("start_timeout", lc.DEFAULT_START_TIMEOUT_S),
            now=time.time(),
            since=since,
            idle_pause_after_s=self.p.get("idle_pause_after"),
            pin=bool(self.p.get("pin")),
            gpu_memory_utilization=self.p.get("gpu_memory_utilization"),
        )

    def _lifecycle_holds(self, cur: ContainerState | None) -> bool:
        """The existing container with this configuration, as the lifecycle record sees it: one the node agent stopped
        for good fails this run with its cause (unless reset_failed / state=restarted); one past its serve_for deadline
        is reported ``expired`` and left as it is (not a drift). True when the run ends here."""
        directory = self._lifecycle_dir()
        self.result.setdefault("lifecycle", None)
        self.result.setdefault("serve_until", None)
        if directory is None or cur is None or self.p["state"] == "stopped":
            return False
        rec = dict(lc.load(directory, self.name))
        self._lifecycle_converged(rec, cur.id, cur)
        until = lc.deadline(rec)
        self.result["serve_until"] = stamp_or_none(until)
        failed = lc.failed_for(rec, self.want.config_hash)
        if failed is not None:
            self.result["lifecycle"] = "failed"
            raise GpufleetError(
                f"{self.cname} was stopped for good by the node agent: {failed.get('reason')} "
                f"({failed.get('failure_class')}) after {failed.get('failures_in_row')} failures in a row; "
                f"{failed.get('hint') or 'see the agent events'}. Change its configuration, or converge with "
                "reset_failed (gpufleet_reset_failed=true) to start it again",
                failure_class=failed.get("failure_class") or "unknown",
                lifecycle="failed",
                lifecycle_failed=failed,  # not "failed": Ansible's own key
                container_id=cur.id,
                changed=False,
            )
        if until is not None and until <= time.time() and self.p["state"] == "started":
            self.result.update(lifecycle="expired", state="expired", container_id=cur.id)
            if not self.check_mode:
                lc.update(directory, self.name, lambda r: self._lifecycle_converged(r, cur.id, cur))
            return True
        return False

    def _lifecycle_write(self, cur: ContainerState | None) -> None:
        directory = self._lifecycle_dir()
        cid = self.result.get("container_id") or (cur.id if cur is not None else None)
        if directory is None or self.check_mode or not cid:
            return
        rec = lc.update(directory, self.name, lambda r: self._lifecycle_converged(r, cid, cur))
        self.result["serve_until"] = stamp_or_none(lc.deadline(rec))

    # ------------------------------------------------------------------------------------------------ states
    def _absent(self, cur: ContainerState | None) -> dict[str, Any]:
        if cur is not None:
            self._act(f"remove {self.cname}")
            if not self.check_mode:
                if cur.running or cur.status == "paused":
                    if cur.status == "paused":
                        self.rt.unpause(cur.id)
                    self.rt.stop(cur.id, self.p.get("stop_timeout") or 30)
                self.rt.remove(cur.id)
        path = os.path.join(self.p["manifest_dir"], f"{self.name}.json")
        if os.path.exists(path):
            self._act(f"remove manifest {path}")
            if not self.check_mode:
                mf.remove(self.p["manifest_dir"], self.name)
        self.result["diff"] = {"before": cs.masked_spec(lb.parse(cur.labels)["spec"]) if cur else {}, "after": {}}
        self.result["state"] = "absent"
        return self.result

    def _stopped(self, cur: ContainerState | None, same: bool) -> None:
        if cur is None or not same:
            self._prechecks(cur, starting=False)
            if cur is not None:
                self._act(f"remove {self.cname} (configuration changed)")
                if not self.check_mode:
                    self.rt.remove(cur.id)
            self._act(f"create {self.cname} (not started)")
            if not self.check_mode:
                self.result["container_id"] = self.rt.create(self._create_spec())
        else:
            self._stop_existing(cur)
        self.result["state"] = "stopped"

    def _stop_existing(self, cur: ContainerState) -> None:
        """Stop the container as it is (unpaused first when the engine froze it); nothing when not running."""
        self.result["container_id"] = cur.id
        if cur.running or cur.status in ("paused", "restarting"):
            self._act(f"stop {self.cname}")
            if not self.check_mode:
                if cur.status == "paused":
                    self.rt.unpause(cur.id)
                self.rt.stop(cur.id, self.p["stop_timeout"])
                directory = self._lifecycle_dir()
                if directory is not None:
                    lc.update(directory, self.name, lambda r: lc.stopped_on_request(r, cur.id, time.time()))

    def _by_name(self, cur: ContainerState | None) -> dict[str, Any]:
        """state stopped, paused or restarted without image and model: act on the existing managed container as it
        is (like community.docker.docker_container), never recreate it. Its port, host and sleep mode come from its
        labels; the configuration is not compared and the manifest is left as it is."""
        state = self.p["state"]
        if cur is None:
            raise GpufleetError(
                f"container {self.cname} does not exist: state={state} without image and model acts on an existing "
                "container only; give image and model to create it"
            )
        lab = lb.parse(cur.labels)
        if not lab["managed"]:
            raise GpufleetError(f"container {self.cname} is not managed by gpufleet (no gpufleet.managed=true label)")
        self.p = dict(self.p, host=lab["host"] or self.p.get("host"), port=lab["port"] or self.p["port"])
        self.p["sleep_mode"] = lab["sleep_mode"]
        before = "started" if cur.running else ("paused" if cur.status == "paused" else "stopped")
        spec = lab["spec"] or {}
        self.result.update(
            config_hash=lab["config_hash"],
            spec=cs.masked_spec(spec) if spec else {},
            endpoint=self.base,
            vllm_version=lab["vllm_version"],
            argv=list(spec.get("argv") or []),
            manifest=lab["manifest"] or {},
            changed_keys=[],
        )
        if self.p.get("manifest_dir"):
            self.result["manifest_path"] = os.path.join(self.p["manifest_dir"], f"{self.name}.json")
        if state == "stopped":
            self._stop_existing(cur)
            self.result["state"] = "stopped"
        elif state == "restarted":
            self._restart(cur)
            self.result["state"] = "started"
        else:  # paused
            self._ensure_running(cur)
            self._pause()
        after = self.result["state"]
        self.result["diff"] = {
            "before": {"state": before if self.result["changed"] else after},
            "after": {"state": after},
        }
        return self.result

    def _ensure_running(self, cur: ContainerState) -> None:
        self.result["container_id"] = cur.id
        started = False
        if cur.status == "paused" and self.p["state"] == "paused" and not self.p.get("sleep_mode"):
            self.result["state"] = "paused"  # already frozen as declared
            return
        if cur.status == "paused":
            self._act(f"unpause {self.cname}")
            if not self.check_mode:
                self.rt.unpause(cur.id)
        elif not cur.running:
            self._make_room()
            self._act(f"start {self.cname}")
            started = True
            if not self.check_mode:
                self.rt.start(cur.id)
        # Read-only probes run in check mode too, so its prediction matches the real run.
        if self.p.get("sleep_mode") and self.p["state"] == "started" and not started and cur.running:
            directory = self._lifecycle_dir()
            asleep = lc.paused(lc.load(directory, self.name)) if directory else None
            if asleep is not None:
                # Paused on purpose (idle, warm cache, pause.yml): it stays asleep and routable; the first request
                # (the node agent) or resume.yml wakes it. Not a drift for the converge to fix.
                self.result.update(state="paused", lifecycle="paused", paused=asleep)
                return
            if rd.is_sleeping(self.base, self.p.get("api_key")):
                self._act("wake_up (sleep mode)")
                if not self.check_mode and not rd.wake_up(self.base, self.p.get("api_key")):
                    raise GpufleetError(f"POST {self.base}/wake_up failed; the server stays asleep")
        if self.check_mode:
            self.result["state"] = "started"
            return
        if self.p["wait"]:
            self._wait(cur.id, rollback_to=None, fresh=started)
        self.result["state"] = "started"

    def _restart(self, cur: ContainerState) -> None:
        self._act(f"restart {self.cname}")
        self.result["container_id"] = cur.id
        if self.check_mode:
            return
        if cur.status == "paused":
            self.rt.unpause(cur.id)
        if cur.running or cur.status == "restarting":
            self.rt.stop(cur.id, self.p["stop_timeout"])
        self.rt.start(cur.id)
        if self.p["wait"]:
            self._wait(cur.id, rollback_to=None, fresh=True)
        self.result["state"] = "started"

    def _pause(self) -> None:
        if self.p.get("sleep_mode"):
            if not self.result["changed"] and rd.is_sleeping(self.base, self.p.get("api_key")):
                self.result["state"] = "paused"
                return
            self._act(f"sleep level {self.p['sleep_level']} (POST /sleep)")
            if not self.check_mode and not rd.sleep(self.base, self.p.get("api_key"), self.p["sleep_level"]):
                raise GpufleetError(
                    f"POST {self.base}/sleep failed; the image's vLLM must support sleep mode (--enable-sleep-mode, "
                    "VLLM_SERVER_DEV_MODE=1, both set by sleep_mode=true)"
                )
        else:
            cur = self.rt.container(self.cname)
            if self.check_mode and any(a.startswith(("create", "start")) for a in self.result["actions"]):
                cur = None  # would be (re)created or started: it will not be paused
            if cur is None or cur.status != "paused":
                self._act(f"pause {self.cname} (engine freeze; GPU memory stays allocated, use sleep_mode to free it)")
                if not self.check_mode and cur is not None:
                    self.rt.pause(cur.id)
        self.result["state"] = "paused"

    # ------------------------------------------------------------------------------------------------ deploy
    def _make_room(self) -> None:
        """The warm cache (warm.py): before this replica starts, the least recently used pausable replicas on its
        GPUs are put to sleep when it would not fit beside them (the pre-checks then see the memory freed)."""
        directory = self._lifecycle_dir()
        if directory is None or self.p["state"] == "stopped":
            return
        gpus = cs.gpus_of(self.p)
        util = self.p.get("gpu_memory_utilization")
        try:
            chosen = warm.make_room(self.rt, directory, self.name, gpus, util, time.time(), check_mode=True)
        except GpufleetError:
            return  # not enough to put to sleep: the GPU pre-checks decide with the memory they see
        for other in chosen:
            self._act(f"sleep {lb.container_name(other)} (warm cache: least recently used, makes room on its GPUs)")
        if chosen and not self.check_mode:
            warm.make_room(self.rt, directory, self.name, gpus, util, time.time())
        self.result["paused_for_room"] = chosen

    def _deploy(self, cur: ContainerState | None, start: bool) -> None:
        if start:
            self._make_room()
        self._prechecks(cur, starting=start)
        old_live = bool(cur and (cur.running or cur.status in ("paused", "restarting")))
        if cur is not None:
            self.result["replaced"] = True
            if old_live:
                self._act(f"stop {self.cname} and keep it as {self.pname} until the new one is ready")
            else:
                self._act(f"rename {self.cname} to {self.pname}")
        self._act(f"create {self.cname}")
        if start:
            self._act(f"start {self.cname}")
        if self.check_mode:
            self.result["state"] = "started"
            return
        for d in cs.host_dirs(self.p):
            os.makedirs(d, mode=0o755, exist_ok=True)
        if cur is not None:
            if cur.status == "paused":
                self.rt.unpause(cur.id)
            if old_live:
                self.rt.stop(cur.id, self.p["stop_timeout"])
            self.rt.rename(cur.id, self.pname)
        try:
            new_id = self.rt.create(self._create_spec())
        except GpufleetError:
            if cur is not None:
                self._rollback(cur, None, old_live)
            raise
        self.result["container_id"] = new_id
        try:
            self.rt.start(new_id)
        except GpufleetError as e:
            outcome = rd.Outcome(ready=False, phase="starting", waited_s=0.0)
            outcome.log_tail = failures.mask([str(e)], self.secrets)
            outcome.failure_class, outcome.hint = failures.classify(outcome.log_tail)
            self._failed(new_id, cur, old_live, outcome)
        if self.p["wait"]:
            self._wait(new_id, rollback_to=(cur, old_live) if cur is not None else None, fresh=True)
        if cur is not None:
            self.rt.remove(cur.id)
        self.result["state"] = "started"

    def _wait(self, cid: str, rollback_to: tuple[ContainerState | None, bool] | None, fresh: bool) -> None:
        if not fresh:
            names = rd.models(self.base, self.p.get("api_key"))
            if names is not None:
                self.result.update(ready=True, phase="ready", models=names)
                if self.phases:  # pulled: say that it went on to ready
                    self._phase("ready")
                return
        argv = self.desired.argv if self.desired is not None else list(self.result.get("argv") or [])
        smoke = rd.smoke_plan(argv, self.p.get("smoke_request")) if self.p.get("smoke_test", True) else None
        out = rd.wait_ready(
            self.rt, cid, self.base, self.p.get("api_key"), self.p["wait_timeout"], self.secrets, smoke=smoke
        )
        for phase in [*out.phases, out.phase]:
            self._phase(phase)
        self.result["readiness"] = out.as_dict()
        self.result["phase"] = out.phase
        if out.health_ok_at:
            self.result["health_ok_at"] = out.health_ok_at
        if out.ready:
            self.result.update(ready=True, models=out.models)
            return
        cur, old_live = rollback_to if rollback_to else (None, False)
        self._failed(cid, cur, old_live, out)

    def _failed(self, new_id: str, cur: ContainerState | None, old_live: bool, out: rd.Outcome) -> None:
        """Stop the failed container (keep it for `docker logs` unless it replaced one), roll back, raise."""
        details: dict[str, Any] = {
            "failure_class": out.failure_class,
            "hint": out.hint,
            "phase": out.phase,
            "phases": self.phases + ([out.phase] if self.phases[-1:] != [out.phase] else []),
            "exit_code": out.exit_code,
            "log_tail": out.log_tail,
            "container_name": self.cname,
            "actions": self.result["actions"],
            "changed": True,
            "rolled_back": False,
        }
        try:
            self.rt.stop(new_id, 5)
        except GpufleetError:
            pass
        msg = out.hint or "the server did not become ready"
        if cur is not None:
            self.rt.remove(new_id)
            ok = self._rollback(cur, self.result, old_live)
            details["rolled_back"] = True
            details["rollback_ready"] = ok
            details["actions"] = self.result["actions"]
            msg += f"; rolled back to the previous container{' (serving again)' if ok else ''}"
        raise GpufleetError(msg, **details)

    def _rollback(self, cur: ContainerState, result: dict[str, Any] | None, old_live: bool) -> bool:
        self.rt.rename(cur.id, self.cname)
        self.result["actions"].append(f"rollback: rename {self.pname} back to {self.cname}")
        if not old_live:
            return False
        self.rt.start(cur.id)
        self.result["actions"].append(f"rollback: start {self.cname}")
        if not self.p["wait"]:
            return True
        old_key = self.p.get("api_key")
        out = rd.wait_ready(self.rt, cur.id, self.base, old_key, self.p["wait_timeout"], self.secrets)
        # The old server may use another api key: /health answering is enough to say it serves again.
        return out.ready or out.health_ok_at is not None or rd.http(self.base + "/health")[0] == 200

    # ------------------------------------------------------------------------------------------------ create
    def _create_spec(self) -> CreateSpec:
        manifest = self._build_manifest()
        self.result["manifest"] = manifest
        # serve_for is the lifecycle record's (mutable), no longer the gpufleet.serve-until label (_lifecycle_write)
        labels = create.labels_of(self.p, self.want, manifest, None)
        return create.create_spec(self.p, self.want, labels)

    def _build_manifest(self) -> dict[str, Any]:
        return create.manifest_of(self.p, self.want, self.gpus.gathered)

    def _manifest(self, same: bool, cur: ContainerState | None) -> None:
        if "manifest" not in self.result:
            label_manifest = lb.parse(cur.labels)["manifest"] if (same and cur) else None
            self.result["manifest"] = label_manifest or self._build_manifest()
        directory = self.p.get("manifest_dir")
        if not directory:
            return
        path = os.path.join(directory, f"{self.name}.json")
        self.result["manifest_path"] = path
        if self.check_mode:
            return
        changed = mf.write(directory, self.name, self.result["manifest"])[1]
        if changed:
            self.result["actions"].append(f"write manifest {path}")
            self.result["changed"] = True
