"""What a process measures, as Prometheus metric families (its ``GET /metrics``, served by
imsrv/servers/metrics.py).

Hot-path rule: nothing here runs per message.  The servers keep plain counters that cost an
integer add (``Listener.conns``, ``Op.calls``, the dispatcher's ``Counts``, the gateways'
auth counts, the hubs' ``pushes``) or a histogram observation per store batch
(:class:`Histogram`: no lock, the process is one gevent loop); a :class:`ProcessMetrics`
reads them when Prometheus scrapes and builds the families then.  Each process has a
CollectorRegistry of its own (not prometheus_client's global one: several servers in one
test process must not see each other's numbers).

The families (every name starts with ``imsrv_``; counters end in ``_total``):

=====================================  ======================================================
imsrv_info{service,version,codec,json}  1: what runs (plus prometheus_client's process
                                        collector: imsrv_process_cpu_seconds_total,
                                        imsrv_process_resident_memory_bytes, open fds...)
imsrv_connections{listener}             open connections of each listener (gateway,
                                        websocket, api)
imsrv_auths_total{listener,result}      gateway auth frames answered: result ok / failed
imsrv_requests_total{service,op}        requests dispatched, by service (api, gateway) and op
imsrv_sends_total{op}                   send, recall, edit, react requests on the gateways
imsrv_acks_total                        of those, answered ok (stored)
imsrv_pushes_total                      objects pushed to live sessions of this process
imsrv_errors_total{code,op}             error replies by protocol code and op
imsrv_backend_errors_total{backend}     redis / store failures met (answered unavailable,
                                        or a background loop's)
imsrv_log_events_total{level,event}     warning and error log lines, by event
imsrv_store_batch_size                  histogram: requests per store transaction of the
                                        send path (embedded forwarder, distributed forwarder)
imsrv_store_batch_seconds               histogram: seconds per such batch
imsrv_forwarder_queue                   embedded: send requests waiting for the forwarder
imsrv_ingress_length                    distributed forwarders: entries in the ingress stream
imsrv_ingress_pending                   ... read by a forwarder, not yet acknowledged
imsrv_ingress_oldest_pending_seconds    ... age of the oldest of those (0: none)
imsrv_hook_queue_length{hook}           after_send / offline rows queued, not yet posted (a
                                        row: the objects of one store batch; distributed:
                                        the deployment's, the same from every process)
imsrv_scrape_errors_total{part}         parts of a scrape that failed (Redis down...)
=====================================  ======================================================
"""
import platform
from bisect import bisect_left

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

from . import __version__, codec, logs
from .protocol.schemas import SEND_OPS

#: requests per store batch (the forwarders take at most 512 by default)
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: seconds per store batch
SECONDS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Histogram:
    """A histogram for the event loop: ``observe`` is a bisect and two adds (no lock).
    :meth:`family` -> the Prometheus histogram (cumulative buckets, ``le`` inclusive)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds):
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)   # the last one: above every bound
        self.sum = 0.0

    def observe(self, value):
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name, doc):
        buckets, total = [], 0
        for bound, n in zip(self.bounds, self.counts):
            total += n
            buckets.append((floatToGoString(bound), total))
        buckets.append(("+Inf", total + self.counts[-1]))
        return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=self.sum)



class BatchStats:
    """The store batches of a send path: one :meth:`observe` per batch (its requests, its
    seconds)."""

    __slots__ = ("sizes", "seconds")

    def __init__(self):
        self.sizes = Histogram(SIZE_BUCKETS)
        self.seconds = Histogram(SECONDS_BUCKETS)

    def observe(self, size, seconds):
        self.sizes.observe(size)
        self.seconds.observe(seconds)

    def families(self):
        yield self.sizes.family("imsrv_store_batch_size", "Requests per store transaction of the send path")
        yield self.seconds.family("imsrv_store_batch_seconds", "Seconds per store batch of the send path")


# ------------------------------------------------------------------ the families of each part
def counter(name, doc, value):
    return CounterMetricFamily(name, doc, value=value)


def gauge(name, doc, value):
    return GaugeMetricFamily(name, doc, value=value)


def labelled(kind, name, doc, labels, values):
    """A counter or gauge family (``kind`` CounterMetricFamily / GaugeMetricFamily) with
    one sample per {label values tuple: value}."""
    family = kind(name, doc, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


def listener_families(listeners):
    """``listeners``: {name: Listener} -> connections per listener, auths of the gateways."""
    yield labelled(GaugeMetricFamily, "imsrv_connections", "Open connections per listener", ["listener"],
                   {(name, ): len(lst.conns) for name, lst in listeners.items()})
    auths = {}
    for name, lst in listeners.items():
        if hasattr(lst, "auths_ok"):
            auths[(name, "ok")] = lst.auths_ok
            auths[(name, "failed")] = lst.auths_failed
    if auths:
        yield labelled(CounterMetricFamily, "imsrv_auths", "Gateway auth frames answered, by result",
                       ["listener", "result"], auths)


def core_families(app):
    """The dispatcher's numbers of the core ``app`` (imsrv.core.app.App)."""
    requests = {}
    for table in (app.api_ops, app.gateway_ops):
        for op, entry in table.items():
            requests[(table.service, op)] = entry.calls
    yield labelled(CounterMetricFamily, "imsrv_requests", "Requests dispatched, by service and op",
                   ["service", "op"], requests)
    yield labelled(CounterMetricFamily, "imsrv_sends", "Send requests (send, recall, edit, react) on the gateways",
                   ["op"], {(op, ): app.gateway_ops[op].calls for op in SEND_OPS if op in app.gateway_ops})
    counts = app.dispatcher.counts
    yield counter("imsrv_acks", "Send requests answered ok (stored)", counts.acks)
    yield labelled(CounterMetricFamily, "imsrv_errors", "Error replies, by protocol code and op", ["code", "op"],
                   counts.errors)
    yield labelled(CounterMetricFamily, "imsrv_backend_errors", "Failures of a backend (redis, store) met",
                   ["backend"], {("redis", ): 0, ("store", ): 0,
                                 **{(b, ): n for b, n in counts.backend_errors.items()}})


def hub_families(hub):
    yield counter("imsrv_pushes", "Objects pushed to live sessions of this process", getattr(hub, "pushes", 0))


def hook_families(hooks, redis=None):
    """``hooks``: the process's queued hooks (imsrv/servers/hook_queue.py), or None (off);
    ``redis``: the client their lengths are asked with (distributed)."""
    if hooks is not None:
        yield labelled(GaugeMetricFamily, "imsrv_hook_queue_length", "Hook rows queued, not yet posted",
                       ["hook"], {(hook, ): n for hook, n in hooks.lengths(redis).items()})


def log_families():
    yield labelled(CounterMetricFamily, "imsrv_log_events", "Warning and error log lines, by event",
                   ["level", "event"], dict(logs.event_counts))


# ------------------------------------------------------------------ the registry of a process
class ProcessMetrics:
    """The metrics of one process: a CollectorRegistry of its own holding prometheus_client's
    process collector (``imsrv_process_*``) and this object, which builds the families of
    its parts at each scrape.  A part is a function -> iterable of metric families
    (:meth:`add`); one that raises (Redis down for the ingress lag) is left out of that
    scrape, counted in ``imsrv_scrape_errors_total{part}`` and logged."""

    def __init__(self, service):
        self.service = service
        self.parts = []   # (name, fn)
        self.scrape_errors = {}
        self.registry = CollectorRegistry(auto_describe=False)
        ProcessCollector(namespace="imsrv", registry=self.registry)
        self.registry.register(self)
        self.add("info", self._info)
        self.add("logs", log_families)

    def add(self, name, part):
        """Add a part: ``part()`` -> metric families, called at each scrape."""
        self.parts.append((name, part))

    def _info(self):
        info = GaugeMetricFamily("imsrv_info", "What this process runs", labels=["service", "version", "codec", "json",
                                                                                "python"])
        info.add_metric([self.service, __version__, codec.IMPLEMENTATION, codec.JSON_BACKEND,
                         platform.python_version()], 1)
        yield info

    def describe(self):
        return []   # names vary (labels): nothing to check at registration

    def collect(self):
        for name, part in self.parts:
            try:
                families = list(part())
            except Exception as exc:
                self.scrape_errors[name] = self.scrape_errors.get(name, 0) + 1
                logs.warning("metrics_part_failed", service=self.service, part=name, error=repr(exc))
                continue
            yield from families
        yield labelled(CounterMetricFamily, "imsrv_scrape_errors", "Parts of a scrape that failed", ["part"],
                       {(n, ): c for n, c in self.scrape_errors.items()})

    def text(self):
        """The exposition, Prometheus text format (bytes)."""
        return generate_latest(self.registry)
