# Copyright (c) gpufleet maintainers
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host's part of a fleet plan, applied in one module run (``gpufleet.vllm.fleet_apply``).

The same steps the single-purpose modules take, in process, with one engine connection:

1. removals (they free the GPUs and ports of new replicas); a failed removal stops the host here;
2. ``model_sync`` once per deployment placed on the host;
3. ``vllm_image`` once per ``[image, vllm_version]`` pair;
4. ``vllm_container`` per replica, in the plan's order, health-gated (``wait``); the first replica whose container
   fails stops the host's rollout (vllm_container has already rolled it back to its previous container). A replica
   whose model sync or image failed is reported failed at that step and not started; the others still run.

``only`` and ``defer`` select the replicas a run converges (the role's rollout waves, ``rollout.py``): ``defer``-red
replicas get their model and image only; with ``only``, only those replicas are prepared and converged. A replica
whose plan spec says ``rollout.mode: surge`` is replaced with a surge (``_surge``).

Each step's parameters are validated against that module's own argument spec (``model_sync.argument_spec``,
``image_module.ARGUMENT_SPEC``, ``container_spec.argument_spec``), so a plan spec means exactly what it would mean as
a task of that module. Secrets come from ``secrets`` (deployment name → ``api_key``, ``hf_token``, ``secret_env``);
the plan never holds them. The result is one record per removal and per replica (``records.py``: the type
``_fleet/summary.py`` reads them back into).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator
from ansible_collections.gpufleet.vllm.plugins.module_utils import _labels as lb
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import readiness
from ansible_collections.gpufleet.vllm.plugins.module_utils._container import validate as container_validate
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.deployment import Deployment
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.info import gather
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.lock import converge_lock, state_dir
from ansible_collections.gpufleet.vllm.plugins.module_utils._container.spec import argument_spec as container_argspec
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.base import Runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._engine.factory import get_runtime
from ansible_collections.gpufleet.vllm.plugins.module_utils._errors import GpufleetError
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet import state as fleet_state
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.drain import Gateways
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.records import RemovalRecord, ReplicaRecord
from ansible_collections.gpufleet.vllm.plugins.module_utils._fleet.rollout import SURGE_SUFFIX
from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ensure import ARGUMENT_SPEC as IMAGE_ARGSPEC
from ansible_collections.gpufleet.vllm.plugins.module_utils._image.ensure import ensure_image
from ansible_collections.gpufleet.vllm.plugins.module_utils._image.progress import PULLS_DIR
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.layout import DEFAULT_MODELS_ROOT
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.lora import add_adapters
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.lora import resolve_params as resolve_lora_params
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.metadata import installed_sizes
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.sync import REQUIRED_IF as SYNC_REQUIRED_IF
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.sync import argument_spec as sync_argspec
from ansible_collections.gpufleet.vllm.plugins.module_utils._model.sync import sync

SECRET_KEYS = ("api_key", "hf_token", "secret_env", "s3_credentials")


def image_key(image: Any, vllm_version: Any, build: Mapping[str, Any] | None = None) -> str:
    """The key of one image to resolve: a plan spec's ``image``, ``vllm_version`` and derived-image ``image_build``."""
    key = "|".join("" if v is None else str(v) for v in (image, vllm_version))
    return f"{key}|{json.dumps(build, sort_keys=True)}" if build else key


def failure_hint(result: Mapping[str, Any]) -> str | None:
    """The first line of a failed step's hint (or message)."""
    text = result.get("hint") or result.get("msg")
    return str(text).strip().splitlines()[0] if text else None


def public_endpoint(spec: Mapping[str, Any], result: Mapping[str, Any], address: str | None) -> str | None:
    """The endpoint clients use: the host's inventory address unless the server binds loopback only."""
    container = spec.get("container") or {}
    given = {"host": container.get("host"), "sleep_mode": container.get("sleep_mode")}
    bind = str(container_validate.with_sleep_mode_host(given)[0]["host"] or "0.0.0.0")
    if bind in ("127.0.0.1", "::1", "localhost") or not address:
        return result.get("endpoint") or None
    return f"http://{address}:{spec.get('port')}"


def validated(
    what: str,
    spec: dict[str, Any],
    params: Mapping[str, Any],
    required_if: list[Any] | None = None,
) -> dict[str, Any]:
    """``params`` checked against a module's argument spec, with its defaults filled in; one error naming ``what``."""
    result = ArgumentSpecValidator(spec, required_if=required_if).validate(dict(params))
    if result.error_messages:
        raise GpufleetError(f"{what}: " + "; ".join(result.error_messages))
    return dict(result.validated_parameters)


def container_params(what: str, args: Mapping[str, Any]) -> dict[str, Any]:
    """vllm_container's parameters from ``args``: its argument spec (types, defaults), then the value checks that
    the module runs first (_container/validate.py: ranges, name, env names, paths, secrets in extra_args)."""
    params, _warning = container_validate.with_sleep_mode_host(validated(what, container_argspec(), args))
    problems = container_validate.option_problems(params, require_name=True)
    if not problems and params.get("state") != "absent":
        problems = container_validate.host_problems(params)
    if problems:
        raise GpufleetError(f"{what}: " + "; ".join(problems), failure_class="bad_args", problems=problems)
    return params


def synced_here(sync_args: Mapping[str, Any]) -> bool:
    """Whether model_sync installs the model under the models root (hub, URL, a ``sources`` order), so the container
    serves the revision directory it returns; a plain local model is served from where it is."""
    return sync_args.get("source") in ("hf", "url") or bool(sync_args.get("sources"))


def with_revision(args: dict[str, Any], spec: Mapping[str, Any], sync_res: Mapping[str, Any]) -> dict[str, Any]:
    """The container arguments with the weights model_sync installed (issue #15): hub and URL models are served from
    the revision directory it returned, and every model's revision id is hashed (``model_revision``), so a new
    revision replaces the container (readiness-gated, rolled back on failure) and never changes the running one."""
    if sync_res.get("path") and synced_here(spec.get("model_sync") or {}):
        args["model"] = sync_res["path"]
    if sync_res.get("revision_id"):
        args["model_revision"] = sync_res["revision_id"]
    return args


def _diff_entry(what: str, diff: Any) -> dict[str, Any] | None:
    if not isinstance(diff, Mapping) or diff.get("before") == diff.get("after"):
        return None
    return {
        "before_header": f"{what} (before)",
        "after_header": f"{what} (after)",
        "before": diff.get("before"),
        "after": diff.get("after"),
    }


def _error_result(err: GpufleetError) -> dict[str, Any]:
    return {"failed": True, "changed": False, "msg": str(err), **err.details}


def _failure_class(res: Mapping[str, Any], default: str) -> str:
    value = res.get("failure_class") or res.get("precheck") or default
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


class HostApply:
    """Applies ``params`` (validated ``fleet_apply`` parameters) on this host."""

    def __init__(
        self,
        params: Mapping[str, Any],
        check_mode: bool = False,
        warn: Callable[[str], None] | None = None,
        runtime: Runtime | None = None,
    ) -> None:
        self.p = params
        self.check_mode = check_mode
        self.warn = warn or (lambda msg: None)
        self._rt = runtime
        self.records: list[ReplicaRecord | RemovalRecord] = []
        self.diffs: list[dict[str, Any]] = []
        self.changed = False
        self.errors: list[str] = []
        self.gateways: Gateways | None = None
        if params.get("gateways") and not check_mode:  # check mode never touches the routers
            self.gateways = Gateways(
                params["gateways"],
                str(params.get("worker_address") or params.get("address") or "127.0.0.1"),
                drain_timeout=float(params.get("drain_timeout") or 0),
                api_key=params.get("gateway_api_key"),
                warn=self.warn,
            )

    @property
    def rt(self) -> Runtime:
        if self._rt is None:
            # One engine connection for every step; its call timeout is vllm_image's (pulls of multi-GB images).
            self._rt = get_runtime(
                self.p["runtime"],
                self.p.get("docker_host"),
                self.p.get("podman_socket"),
                timeout=IMAGE_ARGSPEC["timeout"]["default"],
            )
        return self._rt

    def _secrets(self, deployment: str) -> dict[str, Any]:
        found = (self.p.get("secrets") or {}).get(deployment) or {}
        return {k: found[k] for k in SECRET_KEYS if found.get(k) not in (None, "", {})}

    def _note(self, what: str, res: Mapping[str, Any]) -> None:
        self.changed = self.changed or bool(res.get("changed"))
        entry = _diff_entry(what, res.get("diff"))
        if entry is not None:
            self.diffs.append(entry)

    def _converge(self, params: dict[str, Any]) -> dict[str, Any]:
        """vllm_container's run, holding the deployment's converge lock (none in check mode: nothing changes)."""
        if self.check_mode:
            return Deployment(params, self.rt, self.check_mode, self.warn).run()
        with converge_lock(state_dir(params["manifest_dir"]), params["name"]):
            return Deployment(params, self.rt, self.check_mode, self.warn).run()

    def _stops(self, params: dict[str, Any]) -> dict[str, Any] | None:
        """What converging ``params`` stops (vllm_container's plan, in check mode): the running container's labels
        (``_labels.parse``: its ``port`` and ``host`` among them), or None when nothing stops."""
        try:
            preview = Deployment(params, self.rt, True).run()
        except GpufleetError:
            return None  # the real run fails the same way, before it stops anything
        if not any(str(a).startswith(("stop ", "restart ")) for a in preview.get("actions") or []):
            return None
        running = self.rt.container(lb.container_name(params["name"]))
        return lb.parse(running.labels if running else None)

    def _replace(self, params: dict[str, Any], deployment: str) -> dict[str, Any]:
        """``_converge``, drained (drain.py): when the container will stop and the deployment has routers, the
        replica leaves them first (its requests in flight finish; on the port it runs on now, which a re-placement
        on this host may change) and joins them again once it passed the gate, or once vllm_container brought the
        old container back."""
        gw = self.gateways
        old = self._stops(params) if gw is not None and gw.has(deployment) else None
        if gw is None or old is None:
            res = self._converge(params)
            if gw is not None and res.get("changed") and lb.RAY_HOSTS in (params.get("labels") or {}):
                # A Ray head's server that the Ray step took down with its cluster (drained there, docs/ray.md)
                # joins the deployment's routers again once it passed the gate, as a replaced replica does.
                after: list[str] = []
                gw.rejoin(deployment, gw.routers(deployment), gw.worker(params["port"]), after)
                res = dict(res, actions=[*(res.get("actions") or []), *after])
            return res
        port = int(old.get("port") or params["port"])
        url, new_url = gw.worker(port), gw.worker(params["port"])
        before: list[str] = []
        after: list[str] = []
        left = gw.leave(deployment, url, readiness.base_url(old.get("host") or params.get("host"), port), before)
        try:
            res = self._converge(params)
        except GpufleetError as err:
            if err.details.get("rollback_ready"):
                gw.rejoin(deployment, left, url, after)
            err.details["actions"] = [*before, *(err.details.get("actions") or []), *after]
            raise
        gw.rejoin(deployment, left, new_url, after)
        return dict(res, actions=[*before, *(res.get("actions") or []), *after])

    def _drain_removal(self, item: Mapping[str, Any], actions: list[str]) -> None:
        """A replica the plan removes (scale-down, ``state: absent``, a move to another host, pruned) leaves its
        deployment's routers and finishes its requests in flight before its container stops, like a replaced one
        (drain.py). A Ray worker serves no requests: nothing to drain."""
        if item.get("ray_role") != "worker":
            self.drain(str(item.get("deployment") or ""), str(item.get("name")), actions, item.get("port"))

    def drain(self, deployment: str, name: str, actions: list[str], port: Any = None) -> None:
        """The server ``name`` leaves its deployment's routers and its requests in flight finish (drain.py), before
        its container stops: on the port its labels say (else ``port``). Nothing without routers or a port; the Ray
        step (_fleet/ray.py) drains a head's server the same way before it removes it."""
        gw = self.gateways
        if gw is None or not gw.has(deployment):
            return
        running = self.rt.container(lb.container_name(name))
        found = lb.parse(running.labels if running else None)
        if not (found.get("port") or port):
            return
        at = int(found.get("port") or port)
        gw.leave(deployment, gw.worker(at), readiness.base_url(found.get("host"), at), actions)

    def _container_args(self, spec: Mapping[str, Any], image: Any) -> dict[str, Any]:
        args = dict(spec.get("container") or {})
        args.update(
            image=image,
            wait=True,
            wait_timeout=self.p["wait_timeout"],
            manifest_dir=self.p["manifest_dir"],
            reset_failed=bool(self.p.get("reset_failed")),
            **{k: v for k, v in self._secrets(str(spec.get("deployment"))).items() if k != "s3_credentials"},
        )
        return args

    def preflight(self) -> bool:
        """Every removal's and replica's vllm_container arguments checked before any step runs: bad input fails the
        host's apply with nothing removed, synced or pulled (one record per bad replica or removal)."""
        ok = True
        for item in self.p.get("removals") or []:
            problem = container_validate.name_problem(item.get("name"), "removal name")
            if problem:
                ok = False
                self.records.append(
                    RemovalRecord(name=str(item.get("name")), failed=True, failure_class="bad_args", hint=problem)
                )
                self.errors.append(f"removal of {item.get('name')!r}: {problem}")
        for spec in self.p.get("replicas") or []:
            name = str(spec.get("name"))
            try:
                container_params(f"{name}: vllm_container", self._container_args(spec, "preflight:latest"))
            except GpufleetError as err:
                ok = False
                self.records.append(
                    ReplicaRecord(
                        name=name,
                        deployment=spec.get("deployment"),
                        failed=True,
                        failure_class="bad_args",
                        failed_step="preflight",
                        hint=str(err),
                    )
                )
                self.errors.append(str(err))
        return ok

    # ------------------------------------------------------------------------------------------------ steps
    def remove(self, item: Mapping[str, Any]) -> bool:
        name = str(item.get("name"))
        rec = RemovalRecord(name=name)
        try:
            params = container_params(
                f"removal of {name}",
                {
                    "name": name,
                    "state": "absent",
                    "runtime": self.p["runtime"],
                    "docker_host": self.p.get("docker_host"),
                    "manifest_dir": self.p["manifest_dir"],
                },
            )
            self._drain_removal(item, rec.actions)
            res = self._converge(params)
            rec.changed = bool(res.get("changed"))
            rec.actions += list(res.get("actions") or [])
            self._note(f"gpufleet-{name}", res)
        except GpufleetError as err:
            res = _error_result(err)
            rec.failed, rec.failure_class, rec.hint = True, _failure_class(res, "unknown"), failure_hint(res)
            self.errors.append(f"removal of {name}: {failure_hint(res)}")
        self.records.append(rec)
        return not rec.failed

    def sync_model(self, spec: Mapping[str, Any]) -> dict[str, Any]:
        deployment = str(spec.get("deployment"))
        args = dict(spec.get("model_sync") or {})
        secrets = self._secrets(deployment)
        if secrets.get("hf_token"):
            args["token"] = secrets["hf_token"]
        if args.get("sources") and "s3" in args["sources"]:  # model_sync's no_log options (else the host's chain)
            args.update(secrets.get("s3_credentials") or {})
        if self.p.get("hf_endpoint"):
            args["hf_endpoint"] = self.p["hf_endpoint"]
        try:
            params = validated(f"{deployment}: model_sync", sync_argspec(), args, SYNC_REQUIRED_IF)
            res = add_adapters(params, sync(params, check_mode=self.check_mode), self.check_mode)  # + hub LoRAs
        except GpufleetError as err:
            return _error_result(err)
        self._note(f"model {deployment}", res)
        expected = spec.get("model_path")
        # model_sync installs each revision in <model_path>/<revision_id> (or keeps a flat install at model_path).
        where = res.get("path")
        if synced_here(args) and where and expected and expected not in (where, os.path.dirname(where)):
            return {
                "failed": True,
                "changed": bool(res.get("changed")),
                "msg": f"{deployment}: model_sync put the model at {res['path']} but the plan expected {expected} "
                "(gpufleet_models_root of this host changed during the run?)",
            }
        return res

    def ensure_image(self, image: Any, vllm_version: Any, build: Mapping[str, Any] | None = None) -> dict[str, Any]:
        args = {
            **(build or {}),  # a derived image: extra_pip_packages, plugins and the pip options (issue #19)
            "version": None if image else vllm_version,
            "image": image or None,
            "repository": self.p["image_repository"],
            "pull": self.p["image_pull"],
            "runtime": self.p["runtime"],
            "docker_host": self.p.get("docker_host"),
            "podman_socket": self.p.get("podman_socket"),
            "progress_dir": os.path.join(state_dir(self.p["manifest_dir"]), PULLS_DIR),  # status.yml reads it
        }
        if build and self.p.get("image_registry"):  # built once, pushed, pulled by the other hosts
            args.update(derived_repository=f"{self.p['image_registry'].rstrip('/')}/gpufleet/vllm-openai", push=True)
        try:
            params = validated(f"image {image or vllm_version}", IMAGE_ARGSPEC, args)
            res, warnings = ensure_image(params, self.check_mode, lambda: self.rt)
        except GpufleetError as err:
            return _error_result(err)
        for w in warnings:
            self.warn(w)
        self._note(f"image {image or vllm_version}", res)
        return res

    def run_replica(self, spec: Mapping[str, Any], sync_res: Mapping[str, Any], image_res: Mapping[str, Any]) -> bool:
        """Converge one replica; False when its container failed (the host's rollout stops)."""
        name = str(spec.get("name"))
        rec = ReplicaRecord(name=name, deployment=spec.get("deployment"))
        self.records.append(rec)
        if (spec.get("model_sync") or {}).get("sources"):  # an order of sources: say which one served (or none)
            rec.model_source = sync_res.get("served_by")
        if sync_res.get("failed"):
            rec.failed, rec.failed_step, rec.hint = True, "model_sync", failure_hint(sync_res)
            rec.failure_class = _failure_class(sync_res, "model_sync_failed")
            self.errors.append(f"{name}: {rec.hint}")
            return True
        if image_res.get("failed"):
            rec.failed, rec.failed_step, rec.hint = True, "vllm_image", failure_hint(image_res)
            rec.failure_class = _failure_class(image_res, "image_failed")
            self.errors.append(f"{name}: {rec.hint}")
            return True
        ref = image_res.get("image")
        if not ref or not image_res.get("image_id"):
            # Check mode, the image would be pulled (or a derived image built) first: the container would be created.
            rec.changed, rec.hint = True, "the image would be pulled first; the container would be (re)created"
            self.changed = True
            return True
        where = sync_res.get("path")
        if self.check_mode and sync_res.get("changed") and where and not os.path.exists(str(where)):
            # Check mode, a new model revision would be installed first: the container would be replaced.
            rec.changed, rec.hint = True, f"the model would be synced to {where} first; the container would be replaced"
            self.changed = True
            return True
        try:
            args = with_revision(self._container_args(spec, ref), spec, sync_res)
            args = resolve_lora_params(args)  # hub adapters -> the revision model_sync installed (in the hash)
            params = container_params(f"{name}: vllm_container", args)
            surge = (spec.get("rollout") or {}).get("mode") == "surge"
            dep = str(spec.get("deployment"))
            res = self._surge(spec, params, dep) if surge else self._replace(params, dep)
        except GpufleetError as err:
            if self.check_mode and err.details.get("failure_class") == "lora_missing":  # synced by the real run
                rec.changed, rec.hint = True, "the LoRA adapters would be synced first; the container would be created"
                self.changed = True
                return True
            res = _error_result(err)
            rec.failed, rec.changed, rec.failed_step = True, bool(err.details.get("changed")), "vllm_container"
            rec.failure_class, rec.hint = _failure_class(res, "unknown"), failure_hint(res)
            rec.rolled_back, rec.phase = res.get("rolled_back"), res.get("phase")
            self.changed = self.changed or rec.changed
            self.errors.append(f"{name}: {rec.hint}")
            return False
        self._note(f"gpufleet-{name}", res)
        rec.changed = bool(res.get("changed") or sync_res.get("changed") or image_res.get("changed"))
        rec.phase = res.get("phase")
        rec.endpoint = public_endpoint(spec, res, self.p.get("address"))
        rec.actions = list(res.get("actions") or [])
        return True

    def _remove_container(self, name: str) -> dict[str, Any]:
        params = container_params(
            f"removal of {name}",
            {
                "name": name,
                "state": "absent",
                "runtime": self.p["runtime"],
                "docker_host": self.p.get("docker_host"),
                "manifest_dir": self.p["manifest_dir"],
            },
        )
        return self._converge(params)

    def _surge(self, spec: Mapping[str, Any], params: dict[str, Any], deployment: str) -> dict[str, Any]:
        """Replace a replica with a surge: a copy of its new configuration (``<name>-surge``, on the plan's free GPUs
        and port) starts and passes the readiness gate first, serves while the replica is replaced in place, then is
        removed. A surge that fails is removed and the replica is left as it was (still serving). With routers
        (drain.py) the surge joins them once it passed the gate, before the replica leaves them, and leaves them
        (drained) before it is removed; a surge that the routers do not take fails like a surge that did not start."""
        roll = spec.get("rollout") or {}
        sname = f"{params['name']}{SURGE_SUFFIX}"
        sparams = dict(params, name=sname, port=int(roll["surge_port"]), gpus=[str(g) for g in roll["surge_gpus"]])
        actions = [f"surge: start {sname} on GPUs {','.join(sparams['gpus'])} port {sparams['port']} and wait"]
        leftover = self._remove_container(sname)  # from an interrupted run
        actions += [f"surge: {a}" for a in leftover.get("actions") or []]
        gw = self.gateways if self.gateways is not None and self.gateways.has(deployment) else None
        surge_url = gw.worker(sparams["port"]) if gw else ""
        gw_actions: list[str] = []
        try:
            surged = self._converge(sparams)
            if gw:
                gw.join(deployment, gw.routers(deployment), surge_url, gw_actions)
        except GpufleetError as err:
            if gw:
                gw.leave(deployment, surge_url, readiness.base_url(sparams.get("host"), sparams["port"]), gw_actions)
            try:
                self._remove_container(sname)
            except GpufleetError as cleanup:
                self.warn(f"{sname}: could not remove the failed surge container: {cleanup}")
            details = dict(err.details, rolled_back=True, actions=actions + list(err.details.get("actions") or []))
            raise GpufleetError(
                f"{err} (surge {sname}; {params['name']} was not touched and still serves)", **details
            ) from err
        joined = list(gw_actions)
        try:
            res = self._replace(params, deployment)
        finally:
            gw_actions.clear()
            if gw:
                gw.leave(deployment, surge_url, readiness.base_url(sparams.get("host"), sparams["port"]), gw_actions)
            removed = self._remove_container(sname)
        res = dict(res)
        res["actions"] = [
            *actions,
            *[f"surge: {a}" for a in surged.get("actions") or []],
            *joined,
            *list(res.get("actions") or []),
            *gw_actions,
            *[f"surge: {a}" for a in removed.get("actions") or []],
        ]
        res["changed"] = True
        return res

    def collect_revisions(self, specs: list[Mapping[str, Any]], syncs: dict[str, dict[str, Any]]) -> None:
        """Once the replicas of a deployment whose model got a new revision have converged, model_sync again (a
        no-op) removes the revisions no container uses any more beyond its keep_revisions (the old containers have
        left by now; a replica still on an old revision keeps it)."""
        if self.check_mode:
            return
        failed = {r.deployment for r in self.records if isinstance(r, ReplicaRecord) and r.failed}
        # A rollout wave's sync is a no-op (step 1 installed the revision) and ran before the wave replaced the old
        # containers: collect again when this run replaced any of the deployment's replicas.
        replaced = {r.deployment for r in self.records if isinstance(r, ReplicaRecord) and r.changed}
        for spec in specs:
            dep = str(spec.get("deployment"))
            res = syncs.get(dep)
            if res is None or dep in failed or res.get("failed") or res.get("collected"):
                continue
            if not res.get("changed") and dep not in replaced:
                continue
            again = self.sync_model(spec)
            res["collected"] = True
            if again.get("removed_revisions"):
                self.changed = True

    # ------------------------------------------------------------------------------------------------ entry
    def run(self) -> dict[str, Any]:
        everything = list(self.p.get("replicas") or [])
        only = self.p.get("only")
        defer = set(self.p.get("defer") or [])
        if only is not None:
            everything = [s for s in everything if str(s.get("name")) in set(only)]
        replicas = [s for s in everything if str(s.get("name")) not in defer]
        if not self.preflight():
            records = [r.to_dict() for r in self.records]
            return {"changed": False, "records": records, "failed_count": len(records), "diff": []}
        removed = [self.remove(item) for item in self.p.get("removals") or []]  # each one, even after a failure
        removals_ok = all(removed)
        if removals_ok and everything:
            syncs: dict[str, dict[str, Any]] = {}
            for spec in everything:  # deferred replicas too: their rollout wave then finds model and image ready
                dep = str(spec.get("deployment"))
                if dep not in syncs:
                    syncs[dep] = self.sync_model(spec)
            images: dict[str, dict[str, Any]] = {}
            for spec in everything:
                key = image_key(spec.get("image"), spec.get("vllm_version"), spec.get("image_build"))
                if key not in images:
                    images[key] = self.ensure_image(
                        spec.get("image"), spec.get("vllm_version"), spec.get("image_build")
                    )
            halted: set[str] = set()
            for spec in replicas:
                dep = str(spec.get("deployment"))
                if dep in halted:
                    continue
                key = image_key(spec.get("image"), spec.get("vllm_version"), spec.get("image_build"))
                if not self.run_replica(spec, syncs[dep], images[key]):
                    if only is None:
                        break
                    halted.add(dep)  # a rollout wave: only this deployment's rollout stops
            self.collect_revisions(everything, syncs)
        if self._rt is not None:
            self._rt.close()
        out: dict[str, Any] = {
            "changed": self.changed or any(r.changed for r in self.records),
            "records": [r.to_dict() for r in self.records],
            "failed_count": sum(1 for r in self.records if r.failed),
            "diff": self.diffs,
        }
        return out


def apply_host(
    params: Mapping[str, Any],
    check_mode: bool = False,
    warn: Callable[[str], None] | None = None,
    runtime: Runtime | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Apply one host's part of the plan: the result and the one-line errors of what failed (empty: all ok)."""
    host = HostApply(params, check_mode, warn, runtime)
    result = host.run()
    if params.get("fleet_state"):  # the whole plan's placements, kept on every host (_fleet/state.py)
        kept = fleet_state.write(params["manifest_dir"], params["fleet_state"], check_mode)
        result.update(fleet_state_changed=kept, changed=result["changed"] or kept)
    return result, host.errors


def gather_host(params: Mapping[str, Any], runtime: Runtime | None = None) -> dict[str, Any]:
    """``state=gathered``: the host's managed deployments (no /health probe, no log classification) and its GPUs."""
    out = gather(
        {
            "runtime": params["runtime"],
            "docker_host": params.get("docker_host"),
            "probe": False,
            "classify_failures": False,
            "gpus": True,
            "state_dir": state_dir(params["manifest_dir"]),
            "agent_state_dir": params.get("agent_state_dir"),
            "max_xid_age_s": params.get("max_xid_age_s"),
        },
        runtime,
    )
    out["fleet_state"] = fleet_state.read(params["manifest_dir"])
    # What model_sync installed here, with its weight bytes: the plan's VRAM estimate without hand-typed sizes.
    out["model_sizes"] = installed_sizes(params.get("models_root") or DEFAULT_MODELS_ROOT)
    if params.get("replica_guard_config"):  # a guard of an earlier run to stop (role deployments, replica_guard.yml)
        out["replica_guard_config_exists"] = os.path.exists(params["replica_guard_config"])
    return out
