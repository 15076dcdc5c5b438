"""How ``real_backend.testbed`` shapes a host link with tc tbf, shared with the calibration that
models it (kept free of heavy imports: the testbed launcher reads it before anything else).

A shaped link gets ``tbf rate R burst B latency TBF_QUEUE_S``, with
``B = max(TBF_MIN_BURST_BYTES, TBF_BURST_S * R / 8)`` bytes (R in bit/s).
"""

#: token bucket, in seconds at the rate
TBF_BURST_S = 0.005
#: smallest bucket in bytes (veth hands tbf GSO segments of up to 64 KiB)
TBF_MIN_BURST_BYTES = 64 * 1024
#: queue bound, in seconds at the rate
TBF_QUEUE_S = 0.100
