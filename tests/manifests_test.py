#!/usr/bin/env python3
"""The deployment manifests against the binaries they run (docs/operations.md, "Checks").

Renders the Kubernetes kustomizations of deploy/k8s (base, overlays/one-host) with
`kubectl kustomize` and checks, in every rendering:
  - every object parses and names its apiVersion, kind and name;
  - every container of the kvtier image runs a binary of the build (build/bin), from the image
    kvtier:<project version of CMakeLists.txt>; etcd runs the version of Debian's etcd-server;
  - every config file a container reads (--config, from a ConfigMap volume) is accepted by its
    binary: the binary is started with the file and the container's own arguments, plus one
    argument that makes its start fail at once (an unknown data_interface, a model directory
    whose config.json is empty); exit status 2 (bad options: an unknown key, a bad value, a
    failed check) fails the test, exit 1 (a failed start, after the options were accepted)
    passes;
  - every file a config names (TLS files, the token, API keys, model and spill directories) lies
    on a volume mounted in that container, a Secret's file among the Secret's keys;
  - the ports: listen and metrics_listen match a containerPort, probes and Services name ports
    the selected pods expose, membership.etcd names a Service and port of the rendering;
  - every volumeMount has a volume and every volume is mounted; $(VAR) in args and env is
    defined before; selectors match their templates; a StatefulSet's serviceName exists;
  - sizes: pool_bytes within the store's hugepages-2Mi (or its memory limit),
    spill_capacity_bytes within its spill volume, a decode worker's drain_timeout_ms within its
    terminationGracePeriodSeconds, ETCD_INITIAL_CLUSTER as large as the etcd StatefulSet;
  - a one-member etcd StatefulSet's environment starts Debian's etcd (on free loopback ports),
    healthy and without unrecognized variables.
Then the systemd units of deploy/systemd: `systemd-analyze verify` (ExecStart pointed at the
build), every --config named is an example file beside the units and accepted by the binary,
drain_timeout_ms within TimeoutStopSec.

The image itself (deploy/k8s/Dockerfile) is not built here: no container builder, no network.
`kubectl apply --dry-run=client` needs an API server, so it is not run either.

Usage: manifests_test.py --source REPO --bin BUILD/bin. Exit 0: all checks passed; 1: some
failed (each printed); 77: kubectl or systemd-analyze is missing (what could run, ran).
"""

import argparse
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import yaml

KVTIER_IMAGE = "kvtier"
# The Secrets the base expects (deploy/k8s/base/kustomization.yaml, docs/operations.md) and
# their keys.
SECRETS = {
    "kvtier-tls": {"ca.pem", "server.pem", "server.key", "client.pem", "client.key"},
    "kvtier-service-token": {"service_token"},
    "kvtier-router-tls": {"server.pem", "server.key"},
    "kvtier-api-keys": {"api_keys"},
}
# Config keys that name files or directories (dotted for nested keys).
PATH_KEYS = re.compile(r"(^|\.)(\w+_file|model_dir|spill_dir)$")
# Binaries that serve with a config, and the role a config is for.
SERVERS = {"kvtier-store", "kvtier-prefill", "kvtier-decode", "kvtier-router"}
UNITS = {"B": 1, "KB": 1000, "KiB": 1 << 10, "MB": 1000**2, "MiB": 1 << 20, "GB": 1000**3,
         "GiB": 1 << 30, "TB": 1000**4, "TiB": 1 << 40, "Ki": 1 << 10, "Mi": 1 << 20,
         "Gi": 1 << 30, "Ti": 1 << 40, "K": 1000, "M": 1000**2, "G": 1000**3, "T": 1000**4}


class Checker:
    def __init__(self, source, bindir, workdir):
        self.source = source
        self.bindir = bindir
        self.workdir = workdir
        self.errors = []
        self.checked = 0
        self.configs_run = 0
        self.flag_cache = {}
        # A directory that passes the options' checks (config.json, tokenizer.json) but holds
        # no model: a worker's or the router's start fails on it at once.
        self.fake_model = os.path.join(workdir, "no-model")
        os.makedirs(self.fake_model)
        for name in ("config.json", "tokenizer.json"):
            with open(os.path.join(self.fake_model, name), "w") as f:
                f.write("{}\n")

    def fail(self, where, what):
        self.errors.append(f"{where}: {what}")

    def check(self, ok, where, what):
        self.checked += 1
        if not ok:
            self.fail(where, what)
        return ok

    # --- the binaries -------------------------------------------------------------------------

    def binary(self, name):
        return os.path.join(self.bindir, name)

    def flag_keys(self, binary):
        """{flag: key} from `binary --help`: "--spill-capacity BYTES  help (spill_capacity_bytes;
        default 0)"."""
        if binary in self.flag_cache:
            return self.flag_cache[binary]
        p = subprocess.run([self.binary(binary), "--help"], capture_output=True, text=True,
                           timeout=60)
        entries = {}  # flag -> its help text, continuation lines joined
        flag = None
        for line in p.stdout.splitlines():
            m = re.match(r"\s{1,4}(--[\w-]+)", line)
            if m:
                flag = m.group(1)
                entries[flag] = line
            elif flag and line.startswith("      "):
                entries[flag] += " " + line.strip()
        self.flag_cache[binary] = {f: m[-1] for f, text in entries.items()
                                   if (m := re.findall(r"\(([\w.]+); default", text))}
        return self.flag_cache[binary]

    def run_with_config(self, where, binary, config_text, args):
        """Starts `binary` with the config and `args`, its start made to fail right after the
        options are resolved; the options must be accepted (exit 1, not 2)."""
        self.configs_run += 1
        path = os.path.join(self.workdir, f"config-{self.configs_run}.yaml")
        with open(path, "w") as f:
            f.write(config_text)
        if binary == "kvtier-store":
            fail_start = ["--data-interface=kvtier-test-no-such-interface"]
        else:
            fail_start = [f"--model-dir={self.fake_model}"]
        cmd = [self.binary(binary), f"--config={path}"] + args + fail_start
        # Under ASan (deploy/test.sh runs unit tests in the sanitizer tree) what a failed start
        # leaves unfreed would turn exit 1 into LeakSanitizer's 23: leaks are not checked here.
        env = dict(os.environ)
        env["ASAN_OPTIONS"] = env.get("ASAN_OPTIONS", "") + ":detect_leaks=0"
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env,
                               stdin=subprocess.DEVNULL, cwd=self.workdir)
        except subprocess.TimeoutExpired:
            self.fail(where, f"{binary} did not exit within 60 s: {' '.join(cmd)}")
            return
        err = (p.stderr.strip().splitlines() or [""])[-1]
        if p.returncode == 2:
            self.fail(where, f"{binary} rejects its options: {err}")
        else:
            self.check(p.returncode == 1, where,
                       f"{binary} exited {p.returncode}, want 1 (a failed start): {err}")

    # --- Kubernetes ---------------------------------------------------------------------------

    def render(self, kustomization):
        where = f"kubectl kustomize {kustomization}"
        p = subprocess.run(["kubectl", "kustomize", os.path.join(self.source, kustomization)],
                           capture_output=True, text=True, timeout=120)
        if not self.check(p.returncode == 0, where, p.stderr.strip()):
            return []
        try:
            docs = [d for d in yaml.safe_load_all(p.stdout) if d is not None]
        except yaml.YAMLError as e:
            self.fail(where, f"output is no YAML: {e}")
            return []
        for d in docs:
            ok = isinstance(d, dict) and d.get("apiVersion") and d.get("kind") and \
                d.get("metadata", {}).get("name")
            self.check(ok, where, f"object without apiVersion, kind or name: {str(d)[:200]}")
        return docs

    def check_rendering(self, kustomization):
        docs = self.render(kustomization)
        if not docs:
            self.fail(kustomization, "renders nothing")
            return
        by_kind = {}
        for d in docs:
            by_kind.setdefault(d["kind"], {})[d["metadata"]["name"]] = d
        self.services = by_kind.get("Service", {})
        self.configmaps = by_kind.get("ConfigMap", {})
        workloads = list(by_kind.get("Deployment", {}).values()) + \
            list(by_kind.get("StatefulSet", {}).values())
        self.check(workloads, kustomization, "no Deployment or StatefulSet")
        for w in workloads:
            self.check_workload(f"{kustomization}: {w['kind']} {w['metadata']['name']}", w)
        used = {v["configMap"]["name"] for w in workloads for v in pod_spec(w).get("volumes", [])
                if "configMap" in v}
        for name in self.configmaps:
            self.check(name in used, kustomization, f"ConfigMap {name} is mounted nowhere")
        for s in self.services.values():
            self.check_service(f"{kustomization}: Service {s['metadata']['name']}", s,
                               workloads)
        roles = {c["command"][0] for w in workloads for c in pod_spec(w)["containers"]
                 if c.get("command")}
        self.check(SERVERS <= roles, kustomization,
                   f"runs no {', '.join(sorted(SERVERS - roles))}")

    def check_workload(self, where, w):
        spec = w["spec"]
        pod = pod_spec(w)
        labels = spec["template"]["metadata"].get("labels", {})
        selector = spec.get("selector", {}).get("matchLabels", {})
        self.check(selector and all(labels.get(k) == v for k, v in selector.items()), where,
                   f"selector {selector} does not match the template's labels {labels}")
        if w["kind"] == "StatefulSet":
            self.check(spec.get("serviceName") in self.services, where,
                       f"serviceName {spec.get('serviceName')} is no Service")
        claims = {t["metadata"]["name"]: t for t in spec.get("volumeClaimTemplates", [])}
        volumes = {v["name"]: v for v in pod.get("volumes", [])}
        mounted = set()
        for c in pod["containers"]:
            cw = f"{where} container {c['name']}"
            for m in c.get("volumeMounts", []):
                mounted.add(m["name"])
                self.check(m["name"] in volumes or m["name"] in claims, cw,
                           f"volumeMount {m['name']} has no volume")
            self.check_env_refs(cw, c)
            self.check_probes(cw, c)
            self.check_container(cw, w, c, volumes, claims)
        for name in list(volumes) + list(claims):
            self.check(name in mounted, where, f"volume {name} is mounted nowhere")
        for name, v in volumes.items():
            if "configMap" in v:
                self.check(v["configMap"]["name"] in self.configmaps, where,
                           f"volume {name}: ConfigMap {v['configMap']['name']} is not rendered")
            if "secret" in v:
                secret = v["secret"]["secretName"]
                if self.check(secret in SECRETS, where, f"volume {name}: unknown Secret {secret}"):
                    for item in v["secret"].get("items", []):
                        self.check(item["key"] in SECRETS[secret], where,
                                   f"volume {name}: Secret {secret} has no key {item['key']}")

    def check_env_refs(self, where, c):
        defined = set()
        for e in c.get("env", []):
            for ref in re.findall(r"\$\((\w+)\)", str(e.get("value", ""))):
                self.check(ref in defined, where, f"env {e['name']} uses $({ref}) before it is set")
            defined.add(e["name"])
        for a in c.get("args", []) + c.get("command", []):
            for ref in re.findall(r"\$\((\w+)\)", a):
                self.check(ref in defined, where, f"argument {a} uses $({ref}), not in env")

    def check_probes(self, where, c):
        names = {p.get("name") for p in c.get("ports", [])}
        numbers = {p["containerPort"] for p in c.get("ports", [])}
        for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
            port = c.get(probe, {}).get("httpGet", {}).get("port")
            if port is not None:
                self.check(port in names or port in numbers, where,
                           f"{probe} port {port} is no containerPort")

    def check_container(self, where, w, c, volumes, claims):
        image = c.get("image", "")
        command = c.get("command", [])
        if image.startswith("quay.io/coreos/etcd:"):
            self.check_etcd(where, w, c, image)
            return
        self.check(image == f"{KVTIER_IMAGE}:{self.version}", where,
                   f"image {image}, want {KVTIER_IMAGE}:{self.version} (CMakeLists.txt version)")
        if not self.check(len(command) == 1, where, f"command {command}: want one binary"):
            return
        binary = command[0]
        if not self.check(os.access(self.binary(binary), os.X_OK), where,
                          f"command {binary} is not in the build ({self.bindir})"):
            return
        if binary not in SERVERS:
            return
        # Options: --config from a mounted ConfigMap, the rest of the arguments as flags.
        args = c.get("args", [])
        config_path = None
        flags = {}
        rest = []
        for a in args:
            m = re.fullmatch(r"(--[\w-]+)=(.*)", a)
            if not self.check(m, where, f"argument {a}: want --flag=value"):
                continue
            if m.group(1) == "--config":
                config_path = m.group(2)
            else:
                flags[m.group(1)] = m.group(2)
                rest.append(a)
        if not self.check(config_path, where, "no --config"):
            return
        mounts = {m["mountPath"]: m for m in c.get("volumeMounts", [])}
        config_text = self.mounted_file(where, config_path, mounts, volumes)
        if config_text is None:
            return
        config = flatten(yaml.safe_load(config_text) or {})
        # The flags override the file (docs/service-kit.md); --help names each flag's key.
        options = dict(config)
        keys = self.flag_keys(binary)
        for flag, value in flags.items():
            if self.check(flag in keys, where, f"{binary} has no flag {flag}"):
                options[keys[flag]] = value
        env = {e["name"]: "127.0.0.1" for e in c.get("env", []) if "valueFrom" in e}
        run_args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a)
                    for a in rest]
        self.run_with_config(where, binary, config_text, run_args)
        # Ports of the options against the container's.
        ports = {p["containerPort"] for p in c.get("ports", [])}
        for key in ("listen", "metrics_listen"):
            value = str(options.get(key, ""))
            if value and value != "off":
                port = int(value.rsplit(":", 1)[1])
                self.check(port in ports, where,
                           f"{key} {value}: port {port} is no containerPort {sorted(ports)}")
        self.check("listen" in options, where, "listen is neither in the config nor an argument")
        self.check_advertise(where, options)
        for endpoint in as_list(options.get("membership.etcd")):
            self.check_endpoint(where, endpoint)
        # Files and directories the options name lie on the container's volumes.
        for key, value in options.items():
            if PATH_KEYS.search(key) and value:
                self.check_path(where, key, str(value), mounts, volumes, claims)
        self.check_sizes(where, w, c, binary, options, mounts, claims)

    def check_advertise(self, where, options):
        """A member's address is its listen address; a wildcard needs membership.advertise
        (checked by the binary only when it registers, after start)."""
        host = str(options.get("listen", "")).rsplit(":", 1)[0]
        if as_list(options.get("membership.etcd")) and host in ("0.0.0.0", "::", "[::]"):
            self.check(options.get("membership.advertise"), where,
                       f"listen {options['listen']} is a wildcard: membership.advertise needed")

    def mounted_file(self, where, path, mounts, volumes):
        mount = longest_mount(path, mounts)
        if not self.check(mount, where, f"{path} is on no volumeMount"):
            return None
        v = volumes.get(mount["name"], {})
        if not self.check("configMap" in v, where,
                          f"{path}: volume {mount['name']} is no ConfigMap"):
            return None
        data = self.configmaps.get(v["configMap"]["name"], {}).get("data", {})
        key = os.path.relpath(path, mount["mountPath"])
        if not self.check(key in data, where,
                          f"{path}: ConfigMap {v['configMap']['name']} has no key {key}"):
            return None
        return data[key]

    def check_path(self, where, key, path, mounts, volumes, claims):
        mount = longest_mount(path, mounts)
        if not self.check(mount, where, f"{key} {path} is on no volumeMount"):
            return
        name = mount["name"]
        rel = os.path.relpath(path, mount["mountPath"])
        v = volumes.get(name, {})
        if "secret" in v:
            secret = v["secret"]["secretName"]
            keys = {i["path"] for i in v["secret"].get("items", [])} or SECRETS.get(secret, set())
            self.check(rel in keys, where,
                       f"{key} {path}: volume {name} (Secret {secret}) has no file {rel}")
        elif "configMap" in v:
            data = self.configmaps.get(v["configMap"]["name"], {}).get("data", {})
            self.check(rel in data, where, f"{key} {path}: ConfigMap has no key {rel}")
        if key.endswith("spill_dir"):
            self.check(name in claims and not mount.get("readOnly"), where,
                       f"spill_dir {path} is not on a writable volumeClaimTemplate")

    def check_endpoint(self, where, endpoint):
        m = re.fullmatch(r"https?://([^:/]+):(\d+)", endpoint)
        if not self.check(m, where, f"membership.etcd {endpoint}: want http(s)://host:port"):
            return
        host, port = m.group(1), int(m.group(2))
        service = self.services.get(host.split(".")[0])
        self.check(service and port in [p["port"] for p in service["spec"]["ports"]], where,
                   f"membership.etcd {endpoint}: no Service {host} with port {port}")

    def check_sizes(self, where, w, c, binary, options, mounts, claims):
        limits = c.get("resources", {}).get("limits", {})
        requests = c.get("resources", {}).get("requests", {})
        if binary == "kvtier-store":
            pool = parse_bytes(options.get("pool_bytes", "1GiB"))
            if "hugepages-2Mi" in limits:
                self.check(pool <= parse_bytes(limits["hugepages-2Mi"]), where,
                           f"pool_bytes {options.get('pool_bytes')} exceeds hugepages-2Mi "
                           f"{limits['hugepages-2Mi']}")
                self.check(requests.get("hugepages-2Mi") == limits["hugepages-2Mi"], where,
                           "hugepages-2Mi: requests must equal limits")
            else:
                self.check(pool + (1 << 30) <= parse_bytes(limits.get("memory", "0")), where,
                           f"pool_bytes {options.get('pool_bytes')} + 1 GiB exceeds the memory "
                           f"limit {limits.get('memory')} (no hugepages-2Mi)")
            caps = c.get("securityContext", {}).get("capabilities", {}).get("add", [])
            self.check("IPC_LOCK" in caps, where, "the store needs IPC_LOCK (huge pages, RDMA)")
            spill = options.get("spill_dir")
            if spill:
                mount = longest_mount(str(spill), mounts)
                claim = claims.get(mount["name"]) if mount else None
                if claim:
                    size = parse_bytes(claim["spec"]["resources"]["requests"]["storage"])
                    cap = parse_bytes(options.get("spill_capacity_bytes", "0"))
                    self.check(0 < cap <= size, where,
                               f"spill_capacity_bytes {options.get('spill_capacity_bytes')} not "
                               f"within the spill volume's {size} bytes")
        if binary in ("kvtier-prefill", "kvtier-decode"):
            self.check(str(limits.get("nvidia.com/gpu")) == "1", where,
                       "a worker requests nvidia.com/gpu: 1")
            self.check(options.get("backend") == "cuda", where, "a GPU worker runs backend cuda")
        if "drain_timeout_ms" in options:
            grace = pod_spec(w).get("terminationGracePeriodSeconds", 30)
            self.check(int(options["drain_timeout_ms"]) / 1000 < grace, where,
                       f"drain_timeout_ms {options['drain_timeout_ms']} is not within "
                       f"terminationGracePeriodSeconds {grace}")

    def check_etcd(self, where, w, c, image):
        if shutil.which("etcd"):
            out = subprocess.run(["etcd", "--version"], capture_output=True, text=True).stdout
            m = re.search(r"etcd Version: (\S+)", out)
            self.check(m and image.endswith(":v" + m.group(1)), where,
                       f"image {image}, but Debian's etcd is {m.group(1) if m else '?'}")
        env = {e["name"]: e.get("value", "") for e in c.get("env", [])}
        members = [m for m in env.get("ETCD_INITIAL_CLUSTER", "").split(",") if m]
        replicas = w["spec"].get("replicas", 1)
        self.check(len(members) == replicas, where,
                   f"ETCD_INITIAL_CLUSTER has {len(members)} members, the StatefulSet {replicas}")
        for m in members:
            name, url = m.split("=", 1)
            self.check(f"//{name}.{w['spec']['serviceName']}:" in url, where,
                       f"member {m} is not a pod of Service {w['spec']['serviceName']}")
        if replicas == 1 and shutil.which("etcd"):
            self.start_etcd(where, w, c)

    def start_etcd(self, where, w, c):
        """Starts Debian's etcd with the container's environment (pod names and the wildcard
        as 127.0.0.1, free ports, a scratch data directory): the variables are etcd's and the
        member becomes healthy."""
        pod = f"{w['metadata']['name']}-0"
        peer_host = f"{pod}.{w['spec']['serviceName']}"
        ports = {"2379": str(free_port()), "2380": str(free_port())}
        env = {"POD_NAME": pod}
        for e in c.get("env", []):
            if "value" in e:
                env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), ""),
                                        e["value"])
        for k, v in env.items():
            v = v.replace(peer_host, "127.0.0.1").replace("0.0.0.0", "127.0.0.1")
            env[k] = re.sub(r":(2379|2380)\b", lambda m: ":" + ports[m.group(1)], v)
        env["ETCD_DATA_DIR"] = os.path.join(self.workdir, "etcd")
        log_path = os.path.join(self.workdir, "etcd.log")
        with open(log_path, "w") as log:
            p = subprocess.Popen(["etcd"], env={"PATH": os.environ.get("PATH", ""), **env},
                                 stdout=log, stderr=subprocess.STDOUT)
        try:
            healthy = False
            for _ in range(100):  # 10 s
                try:
                    with urllib.request.urlopen(
                            f"http://127.0.0.1:{ports['2379']}/health", timeout=1) as r:
                        healthy = b'"true"' in r.read()
                except OSError:
                    pass
                if healthy or p.poll() is not None:
                    break
                time.sleep(0.1)
        finally:
            p.terminate()
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        with open(log_path) as f:
            log = f.read()
        self.check(healthy, where, f"etcd with the manifest's environment is not healthy: "
                   f"{log.strip().splitlines()[-3:]}")
        bad = re.findall(r"unrecognized environment variable[^\n]*", log)
        self.check(not bad, where, f"etcd: {bad}")

    def check_service(self, where, s, workloads):
        selector = s["spec"].get("selector", {})
        pods = [w for w in workloads
                if all(w["spec"]["template"]["metadata"].get("labels", {}).get(k) == v
                       for k, v in selector.items())]
        if not self.check(pods, where, f"selector {selector} selects no pods"):
            return
        for p in s["spec"]["ports"]:
            target = p.get("targetPort", p["port"])
            found = any(target in (cp.get("name"), cp["containerPort"])
                        for w in pods for c in pod_spec(w)["containers"]
                        for cp in c.get("ports", []))
            self.check(found, where, f"port {p['port']}: target {target} is no containerPort")

    # --- systemd ------------------------------------------------------------------------------

    def check_systemd(self):
        unit_dir = os.path.join(self.source, "deploy", "systemd")
        units = sorted(f for f in os.listdir(unit_dir) if f.endswith(".service"))
        want = {"kvtier-store.service", "kvtier-prefill@.service", "kvtier-decode@.service",
                "kvtier-router.service"}
        self.check(want <= set(units), unit_dir, f"missing {sorted(want - set(units))}")
        verify_dir = os.path.join(self.workdir, "units")
        os.makedirs(verify_dir)
        to_verify = []
        for unit in units:
            where = f"deploy/systemd/{unit}"
            with open(os.path.join(unit_dir, unit)) as f:
                text = f.read()
            keys = {}
            for line in text.splitlines():
                m = re.fullmatch(r"(\w+)=(.*)", line)
                if m:
                    keys.setdefault(m.group(1), m.group(2))
            for key, value in (("Restart", "on-failure"), ("KillSignal", "SIGTERM")):
                self.check(keys.get(key) == value, where, f"want {key}={value}")
            exec_start = keys.get("ExecStart", "").split()
            if not self.check(exec_start and exec_start[0].startswith("/usr/local/bin/"),
                              where, "ExecStart: want /usr/local/bin/<binary>"):
                continue
            binary = os.path.basename(exec_start[0])
            self.check(os.access(self.binary(binary), os.X_OK), where,
                       f"{binary} is not in the build")
            if binary in ("kvtier-store", "kvtier-prefill", "kvtier-decode"):
                self.check(keys.get("LimitMEMLOCK") == "infinity", where,
                           "want LimitMEMLOCK=infinity (RDMA registration)")
            instance = "0" if unit.endswith("@.service") else ""
            config = None
            if "--config" in exec_start:
                config = exec_start[exec_start.index("--config") + 1].replace("%i", instance)
            if self.check(config and config.startswith("/etc/kvtier/"), where,
                          "ExecStart: want --config /etc/kvtier/<file>.yaml"):
                example = os.path.join(unit_dir, os.path.basename(config))
                if self.check(os.path.exists(example), where,
                              f"no example {os.path.relpath(example, self.source)}"):
                    with open(example) as f:
                        config_text = f.read()
                    self.run_with_config(f"{where} with {os.path.basename(example)}", binary,
                                         config_text, [])
                    options = flatten(yaml.safe_load(config_text) or {})
                    self.check_advertise(where, options)
                    drain = options.get("drain_timeout_ms")
                    if drain is not None:
                        stop = parse_seconds(keys.get("TimeoutStopSec", "90"))
                        self.check(int(drain) / 1000 < stop, where,
                                   f"drain_timeout_ms {drain} not within TimeoutStopSec {stop}")
            # systemd-analyze verify checks that ExecStart is executable: the build's binary.
            name = unit.replace("@.service", "@" + instance + ".service") if instance else unit
            with open(os.path.join(verify_dir, name), "w") as f:
                f.write(text.replace(exec_start[0], self.binary(binary)))
            to_verify.append(os.path.join(verify_dir, name))
        if not shutil.which("systemd-analyze"):
            return False
        p = subprocess.run(["systemd-analyze", "verify"] + to_verify, capture_output=True,
                           text=True, timeout=120)
        out = (p.stdout + p.stderr).strip()
        self.check(p.returncode == 0 and not out, "systemd-analyze verify", out)
        return True


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_spec(w):
    return w["spec"]["template"]["spec"]


def flatten(d, prefix=""):
    """{'a': {'b': 1}} -> {'a.b': 1}: the dotted keys of docs/service-kit.md."""
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def as_list(v):
    return v if isinstance(v, list) else ([] if v in (None, "") else [v])


def longest_mount(path, mounts):
    best = None
    for mount_path, m in mounts.items():
        if path == mount_path or path.startswith(mount_path.rstrip("/") + "/"):
            if best is None or len(mount_path) > len(best["mountPath"]):
                best = m
    return best


def parse_bytes(text):
    """'64GiB', '512Gi', '4G', 1024 -> bytes (common/parse_bytes.h, Kubernetes quantities)."""
    m = re.fullmatch(r"\s*(\d+)\s*([A-Za-z]*)\s*", str(text))
    if not m or m.group(2) not in UNITS and m.group(2):
        raise ValueError(f"not a size: {text!r}")
    return int(m.group(1)) * UNITS.get(m.group(2), 1)


def parse_seconds(text):
    m = re.fullmatch(r"(\d+)(s|min)?", text)
    return int(m.group(1)) * (60 if m.group(2) == "min" else 1) if m else 0


def project_version(source):
    with open(os.path.join(source, "CMakeLists.txt")) as f:
        return re.search(r"project\(kvtier VERSION (\S+)", f.read()).group(1)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", required=True, help="the repository")
    parser.add_argument("--bin", required=True, help="the build's bin directory")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvtier-manifests-") as workdir:
        checker = Checker(os.path.abspath(args.source), os.path.abspath(args.bin), workdir)
        checker.version = project_version(checker.source)
        missing = []
        if shutil.which("kubectl"):
            for k in ("deploy/k8s/base", "deploy/k8s/overlays/one-host"):
                checker.check_rendering(k)
        else:
            missing.append("kubectl (the Kubernetes manifests were not rendered)")
        if not checker.check_systemd():
            missing.append("systemd-analyze (the units were not verified)")
    for e in checker.errors:
        print("FAILED", e)
    print(f"{checker.checked} checks, {len(checker.errors)} failed")
    if checker.errors:
        return 1
    if missing:
        print("skipped: no " + "; no ".join(missing))
        return 77
    return 0


if __name__ == "__main__":
    sys.exit(main())
