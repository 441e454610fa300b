# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The state machine of vllm_container: plan, pre-check, act (or, in check mode, only plan), wait, roll back.

The plan is computed the same way in check mode and in a real run (``Deployment.plan``); check mode returns it and
stops, so the two can never disagree about ``changed``.
"""

from __future__ import annotations

import datetime
import errno
import os
import socket
from collections.abc import Callable, Collection, Mapping
from typing import Any

from ansible_collections.gpufleet.vllm.plugins.module_utils import _failures as failures
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import manifest as mf
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness as rd
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import spec as cs
from ansible_collections.gpufleet.vllm.plugins.module_utils._duration import parse_duration
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import (
    ContainerState,
    CreateSpec,
    ImageInfo,
    Runtime,
)
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError

# Imported where used, not here, so that a no-op converge (label hash equal -> changed false) never loads them:
# gpu (NVML / nvidia-smi, for the GPU pre-checks), vllm_args and its flag tables (argv mapping and validation),
# image_ref (pull). AnsiballZ still ships them: it follows imports inside functions too.

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def _bad_args(e: GpufleetError) -> GpufleetError:
    """A vllm_args error as the module reports it: ``bad_args: <message>`` with failure_class bad_args."""
    details = dict(e.details)
    details.setdefault("failure_class", "bad_args")
    return GpufleetError(f"bad_args: {e.msg}", **details)


def gpu_facts() -> tuple[list[dict[str, Any]] | None, str | None]:
    """(gpus list, None) from plugins/module_utils/_gpu/facts.py (NVML, else nvidia-smi), or (None, why not)."""
    from ansible_collections.gpufleet.vllm.plugins.module_utils._gpu.facts import gather_gpus

    try:
        facts = gather_gpus(timeout=10.0)
    except Exception as e:  # no NVML on this host is not an error for us: the checks are skipped with a warning
        return None, f"GPU facts unavailable: {e}"
    if facts.get("gpu_source") in (None, "none"):
        return None, f"no GPU source answered ({facts.get('gpu_source_reason') or 'no NVML, no nvidia-smi'})"
    return list(facts.get("gpus") or []), None


def port_in_use(host: str, port: int) -> bool:
    """True when something on this host already listens on host:port."""
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, port))
        return False
    except OSError as e:
        return e.errno == errno.EADDRINUSE
    finally:
        s.close()


def apply_manifest(params: dict[str, Any], explicit: Collection[str] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(parameters, warnings) for ``from_manifest``: the manifest on this host read and merged under the parameters
    given explicitly (manifest.merge; ``explicit`` = the names the task set, None = those that differ from their
    default). Without from_manifest: the parameters as they are. The result has from_manifest cleared, so applying
    it twice changes nothing. Call it before choosing the engine adapter: the manifest may name the runtime."""
    source = params.get("from_manifest")
    if not source:
        return params, []
    if isinstance(source, Mapping):  # the manifest itself (e.g. read on the controller)
        manifest = dict(source)
        mf.check(manifest, "the manifest given")
    elif isinstance(source, str):
        manifest = mf.read(os.path.expanduser(source))
    else:
        raise GpufleetError("from_manifest: give a manifest file path on this host or the manifest itself (a dict)")
    return mf.merge(params, manifest, explicit)


class Deployment:
    def __init__(
        self,
        params: dict[str, Any],
        runtime: Runtime,
        check_mode: bool = False,
        warn: Callable[[str], None] | None = None,
        gpu_facts_fn: Callable[[], tuple[list[dict[str, Any]] | None, str | None]] = gpu_facts,
        explicit: Collection[str] | None = None,
    ) -> None:
        """``params``: vllm_container's parameters (argument_spec(), defaults applied). With ``from_manifest`` set,
        the manifest is read and merged here (apply_manifest; ``explicit`` names the parameters the caller set);
        the ``runtime`` adapter must then be the one of the merged parameters."""
        self.warn = warn or (lambda msg: None)
        if params.get("from_manifest"):
            params, warnings = apply_manifest(params, explicit)
            for w in warnings:
                self.warn(w)
            if runtime.name in ("docker", "podman") and params.get("runtime") not in (None, runtime.name):
                raise GpufleetError(
                    f"from_manifest gives runtime {params['runtime']} but the engine adapter is {runtime.name}; "
                    "merge the manifest first (container.apply_manifest) and build the adapter from the result"
                )
        if not params.get("name"):
            raise GpufleetError("name is required (or from_manifest, whose deployment name is then used)")
        self.p = params
        self.rt = runtime
        self.check_mode = check_mode
        self.gpu_facts_fn = gpu_facts_fn
        self.name = params["name"]
        self.cname = lb.container_name(self.name)
        self.pname = lb.previous_name(self.name)
        self.result: dict[str, Any] = {"changed": False, "actions": [], "container_name": self.cname}
        self.secrets = [v for v in [params.get("api_key"), params.get("hf_token")] if v]
        self.secrets += [str(v) for v in (params.get("secret_env") or {}).values() if v not in (None, "")]
        self._facts: list[dict[str, Any]] | None = None
        self._facts_loaded = False
        self.serve_for: datetime.timedelta | None = None  # parsed in run(), before anything is touched
        self.phases: list[str] = []  # pulling (this module) + the start-up phases the server's log showed

    # ------------------------------------------------------------------------------------------------ helpers
    def _phase(self, phase: str) -> None:
        """Record a phase this run went through (result key ``phases``)."""
        rd.add_phase(self.phases, phase)
        self.result["phases"] = list(self.phases)

    def _act(self, action: str) -> None:
        self.result["actions"].append(action)
        self.result["changed"] = True

    def _facts_list(self) -> list[dict[str, Any]] | None:
        if not self._facts_loaded:
            self._facts, why = self.gpu_facts_fn()
            self._facts_loaded = True
            if self._facts is None and why:
                self.warn(f"GPU pre-checks skipped: {why}")
        return self._facts

    @property
    def base(self) -> str:
        return rd.base_url(self.p.get("host"), self.p["port"])

    def _image(self) -> ImageInfo | None:
        """The image, or None when it is absent and ``pull: missing`` says to pull it (``_pull``)."""
        ref = self.p["image"]
        img = self.rt.image(ref)
        if img is None and (self.p.get("pull") or "never") != "missing":
            raise GpufleetError(
                f"image {ref} is not present in {self.rt.name}; pull or build it first (gpufleet.vllm.vllm_image), "
                "or set pull: missing to let vllm_container pull it",
                precheck="image_absent",
            )
        return img

    def _pull(self) -> ImageInfo | None:
        """Pull the absent image through the engine adapter (phase ``pulling``); None in check mode."""
        from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ref import split_reference

        ref = self.p["image"]
        repo, tag, digest = split_reference(ref)
        self._act(f"pull {ref}")
        self._phase("pulling")
        if self.check_mode:
            return None
        try:
            self.rt.pull(repo, digest or tag or "latest")
        except GpufleetError as e:
            details = {**e.details, "phase": "pulling", "phases": list(self.phases), "image": ref}
            details.setdefault("failure_class", "pull_failed")
            raise GpufleetError(e.msg, **details) from e
        img = self.rt.image(ref)
        if img is None:
            raise GpufleetError(
                f"pulled {ref} but {self.rt.name} does not show it", failure_class="pull_failed", phase="pulling"
            )
        return img

    def _predicted_mode(self) -> tuple[str, str | None]:
        """(model mode, vLLM version) of an image that is not pulled yet (check mode): from vllm_version or the
        tag (v0.10.2 -> 0.10.2). Images before vLLM 0.9 start with the api_server module (``--model``)."""
        from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ref import split_reference, version_of_tag

        version = self.p.get("vllm_version") or version_of_tag(split_reference(self.p["image"])[1] or "")
        parts = [int(x) for x in (version or "").split(".")[:2] if x.isdigit()]
        return ("option" if len(parts) == 2 and tuple(parts) < (0, 9) else "positional"), version

    def _specs(
        self, img: ImageInfo | None, mode: str, version: str | None, cur: ContainerState | None
    ) -> tuple[dict[str, Any], dict[str, str], set[str]]:
        """(spec, env, secret keys). ``validate_args`` maps the typed options to the flags of this vLLM version (one
        it lacks is bad_args here, before anything is touched, check mode included). A container whose
        ``gpufleet.argv-flags`` label says its argv was mapped from the same options for the same version is first
        compared with the default flags, without loading the flag tables: equal hashes mean a no-op."""
        image_id = img.id if img is not None else None
        validate = bool(self.p.get("validate_args"))
        if not validate:
            return cs.normalized_spec(self.p, image_id, mode)
        if (
            cur is not None
            and img is not None
            and cur.labels.get(lb.ARGV_FLAGS) == cs.argv_flags_marker(self.p, version)
        ):
            spec, env, secret_keys = cs.normalized_spec(self.p, image_id, mode)
            if cs.config_hash(spec) == cur.labels.get(lb.CONFIG_HASH):
                return spec, env, secret_keys
        try:
            return cs.normalized_spec(self.p, image_id, mode, check_version=True, vllm_version=version)
        except GpufleetError as e:
            if e.details.get("failure_class") == "bad_args":
                raise _bad_args(e) from e
            raise

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
        self._host_warning()
        img = self._image()
        if img is None:
            # pull: missing. The pre-checks that do not need the image run first: a pull can take long.
            self.ctx = {"spec": {"gpus": cs.gpus_of(self.p)}}
            self._prechecks(cur, starting=state != "stopped", argv=False)
            img = self._pull()
        if img is not None:
            mode, version = cs.model_mode(img.entrypoint), self.p.get("vllm_version") or img.vllm_version
        else:  # check mode: the image would be pulled first
            mode, version = self._predicted_mode()
        spec, env, secret_keys = self._specs(img, mode, version, cur)
        h = cs.config_hash(spec)
        cur_l = lb.parse(cur.labels) if cur else None
        same = bool(cur and cur_l and cur_l["config_hash"] == h)
        self.ctx = {
            "img": img,
            "mode": mode,
            "spec": spec,
            "env": env,
            "secret_keys": secret_keys,
            "hash": h,
            "version": version,
        }
        self.result.update(
            config_hash=h,
            spec=cs.masked_spec(spec),
            endpoint=self.base,
            vllm_version=version,
            argv=spec["argv"],
        )
        d = cs.diff(cur_l["spec"] if cur_l else None, spec)
        self.result["diff"] = {"before": d["before"], "after": d["after"]}
        self.result["changed_keys"] = d["changed_keys"] if not same else []
        if cur is not None and not same:
            self.result["changed_env_keys"] = cs.changed_env_keys(cur_l["spec"] if cur_l else None, spec)

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
        return self.result

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
            self._act(f"start {self.cname}")
            started = True
            if not self.check_mode:
                self.rt.start(cur.id)
        # Read-only probes run in check mode too, so its prediction matches the real run.
        if self.p.get("sleep_mode") and self.p["state"] == "started" and not started and cur.running:
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
    def _deploy(self, cur: ContainerState | None, start: bool) -> None:
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
        out = rd.wait_ready(self.rt, cid, self.base, self.p.get("api_key"), self.p["wait_timeout"], self.secrets)
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

    def _create_spec(self) -> CreateSpec:
        c = self.ctx
        spec = c["spec"]
        serve_until = None
        if self.serve_for is not None:
            until = datetime.datetime.now(datetime.timezone.utc) + self.serve_for
            serve_until = until.strftime("%Y-%m-%dT%H:%M:%SZ")
        manifest = self._build_manifest()
        self.result["manifest"] = manifest
        labels = lb.build(
            name=self.name,
            port=self.p["port"],
            host=self.p.get("host") or "0.0.0.0",
            config_hash=c["hash"],
            vllm_version=c["version"],
            model=self.p["model"],
            gpus=spec["gpus"],
            manifest=manifest,
            spec=spec,
            serve_until=serve_until,
            sleep_mode=bool(self.p.get("sleep_mode")),
            api_key=bool(self.p.get("api_key")),
            extra=self.p.get("labels"),
            argv_flags=cs.argv_flags_marker(self.p, c["version"]) if self.p.get("validate_args") else None,
        )
        return CreateSpec(
            name=self.cname,
            image=self.p["image"],
            command=spec["argv"],
            env=c["env"],
            mounts=cs.mounts_of(self.p),
            gpus=spec["gpus"],
            network=spec["network"],
            ipc=spec["ipc"],
            shm_size=spec["shm_size"],
            restart_policy=spec["restart_policy"],
            labels=labels,
            port=self.p["port"],
            host=self.p.get("host") or "0.0.0.0",
        )

    def _build_manifest(self) -> dict[str, Any]:
        c = self.ctx
        img = c["img"]  # None in check mode before a pull
        return mf.build(
            self.p,
            argv=c["spec"]["argv"],
            env_keys=list(c["env"]),
            image_ref=self.p["image"],
            image_id=img.id if img is not None else None,
            image_digest=img.digest if img is not None else None,
            vllm_version=c["version"],
            gpus=c["spec"]["gpus"],
            gpu_facts=self._facts if self._facts_loaded else None,
            config_hash=c["hash"],
        )

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

    # ------------------------------------------------------------------------------------------------ checks
    def _host_warning(self) -> None:
        host = self.p.get("host") or "0.0.0.0"
        if host not in LOOPBACK and not self.p.get("api_key"):
            self.warn(
                f"vLLM listens on {host}:{self.p['port']} without api_key: anyone who reaches the port can use the "
                "server; set api_key or host: 127.0.0.1"
            )

    def _prechecks(self, cur: ContainerState | None, starting: bool, argv: bool = True) -> None:
        """Everything that must hold before a container is created (pre-check failures touch nothing). ``argv``:
        validate the argv too (it needs the image's vLLM version: skipped before a pull)."""
        if argv:
            self._validate_argv()
        if not self.p.get("prechecks"):
            return
        p = self.p
        problems: list[tuple[str, str]] = []
        gpus = self.ctx["spec"]["gpus"]
        world = (p.get("tensor_parallel_size") or 1) * (p.get("pipeline_parallel_size") or 1)
        facts = self._facts_list() if gpus else None
        if gpus and gpus != ["all"] and world != len(gpus):
            problems.append(
                (
                    "tp_mismatch",
                    f"tensor_parallel_size x pipeline_parallel_size = {world} but {len(gpus)} GPU(s) are "
                    f"given ({','.join(gpus)}); make them equal",
                )
            )
        if not gpus and world > 1:
            problems.append(
                ("tp_mismatch", f"tensor_parallel_size x pipeline_parallel_size = {world} but no gpus given")
            )
        if facts is not None and gpus:
            by_id: dict[str, dict[str, Any]] = {}
            for g in facts:
                by_id[str(g.get("index"))] = g
                if g.get("uuid"):
                    by_id[str(g["uuid"])] = g
            if gpus == ["all"]:
                selected = list(facts)
                if world != len(facts) and world > 1:
                    problems.append(
                        (
                            "tp_mismatch",
                            f"tensor_parallel_size x pipeline_parallel_size = {world} but gpus=all is "
                            f"{len(facts)} GPU(s)",
                        )
                    )
            else:
                missing = [g for g in gpus if g not in by_id]
                if missing:
                    have = ", ".join(f"{g.get('index')} ({g.get('uuid')})" for g in facts) or "none"
                    problems.append(("gpu_not_found", f"GPU(s) {', '.join(missing)} not on this host; it has: {have}"))
                selected = [by_id[g] for g in gpus if g in by_id]
            frac = p.get("gpu_memory_utilization") or 0.9
            own = self._own_usage(cur)
            for g in selected:
                total = g.get("memory_total_mib")
                free = g.get("memory_free_mib")
                if total is None or free is None:
                    continue
                free_eff = min(total, free + own.get(str(g.get("index")), 0))
                need = frac * total
                if need > free_eff:
                    problems.append(
                        (
                            "gpu_memory",
                            f"gpu_memory_utilization {frac} x {total} MiB = {need:.0f} MiB on GPU "
                            f"{g.get('index')} but only {free_eff:.0f} MiB are free; lower gpu_memory_utilization to "
                            f"{max(0.0, free_eff / total - 0.01):.2f} or free the GPU",
                        )
                    )
        model = p["model"]
        if cs.is_local_model(model):
            mp = cs.normalize_model(model)
            if not os.path.exists(mp):
                problems.append(
                    (
                        "model_missing",
                        f"model path {mp} does not exist on this host; sync it first (gpufleet.vllm.model_sync)",
                    )
                )
            elif os.path.isdir(mp) and not (
                os.path.exists(os.path.join(mp, "config.json")) or os.path.exists(os.path.join(mp, "params.json"))
            ):
                problems.append(("model_invalid", f"model path {mp} has no config.json"))
        for lo in p.get("lora_modules") or []:
            if not os.path.exists(lo["path"]):
                problems.append(("lora_missing", f"LoRA {lo['name']}: path {lo['path']} does not exist on this host"))
        if starting and (p.get("network") or "host") == "host":
            ours = (
                cur is not None
                and (cur.running or cur.status == "paused")
                and lb.parse(cur.labels)["port"] == p["port"]
            )
            host = p.get("host") or "0.0.0.0"
            if not ours and port_in_use(host if host != "localhost" else "127.0.0.1", p["port"]):
                problems.append(
                    (
                        "port_conflict",
                        f"port {p['port']} is already bound on this host by something else; choose "
                        "another port or stop what listens there",
                    )
                )
        if problems:
            raise GpufleetError(
                "pre-check failed: " + "; ".join(p[1] for p in problems),
                precheck=[p[0] for p in problems],
                problems=[p[1] for p in problems],
                failure_class=problems[0][0] if problems[0][0] == "port_conflict" else None,
            )

    def _own_usage(self, cur: ContainerState | None) -> dict[str, float]:
        """MiB this deployment's current container holds per GPU index (counts as free for its replacement)."""
        if cur is None or not cur.running or not self._facts:
            return {}
        pids = set(self.rt.pids(cur.id))
        out: dict[str, float] = {}
        for g in self._facts:
            used = 0.0
            for proc in g.get("processes") or []:
                if proc.get("pid") in pids:
                    used += float(proc.get("used_memory_mib") or proc.get("memory_mib") or 0)
            if used:
                out[str(g.get("index"))] = used
        if not out:
            # No pid match (e.g. another PID namespace): assume its own share of each GPU it holds.
            old = lb.parse(cur.labels)
            frac = ((old["manifest"] or {}).get("gpu_memory_utilization")) or 0.9
            for g in self._facts:
                if str(g.get("index")) in old["gpus"] or str(g.get("uuid")) in old["gpus"] or old["gpus"] == ["all"]:
                    out[str(g.get("index"))] = frac * float(g.get("memory_total_mib") or 0)
        return out

    def _validate_argv(self) -> None:
        """The whole argv (typed options + extra_args) against the flag table of the deployment's vLLM version
        (vllm_args, issue 9): bad_args before anything is created or started. validate_args: false skips it."""
        if not self.p.get("validate_args"):
            return
        from ansible_collections.gpufleet.vllm.plugins.module_utils._vllm import args as vllm_args

        c = self.ctx
        try:
            warnings = vllm_args.check_argv(
                c["spec"]["argv"],
                c["version"],
                entrypoint=cs.entrypoint_of(c["mode"]),
                env=cs.argv_check_env(c["env"], c["secret_keys"]),
            )
        except GpufleetError as e:
            raise _bad_args(e) from e
        for w in warnings:
            self.warn(str(w))
