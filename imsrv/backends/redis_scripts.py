"""The Lua scripts of the Redis hub (imsrv/backends/redis_hub.py): the routing-table
updates that must be atomic.  Each touches the keys of one user only (one Redis Cluster
slot: their names carry the ``{user}`` hash tag).  A routing entry is the JSON array
[gateway, generation, status, text, token_hash] (redis_hub.py's key layout).
"""

# Generations never go back, even if Redis comes back empty: the counter is lifted to the
# server's clock in microseconds whenever it is behind it.
ATTACH = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local gen = redis.call('INCR', KEYS[2])
if gen < now then
  gen = now
  redis.call('SET', KEYS[2], string.format('%d', now))
end
local g = string.format('%d', gen)
local old = redis.call('HGET', KEYS[1], ARGV[1])
local entry = string.gsub(ARGV[2], '"GEN"', g)
redis.call('HSET', KEYS[1], ARGV[1], entry)
return {g, old or false, redis.call('HLEN', KEYS[1])}
"""

# Remove (or update) the entry only if it still belongs to this generation: a replaced
# session can never remove or overwrite the newer one (guarantee 7).
DETACH = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cjson.decode(cur)[2] == tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return redis.call('HLEN', KEYS[1])
"""

UPDATE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and cjson.decode(cur)[2] == tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
  return 1
end
return 0
"""

# Put a live session back in the routing table after Redis lost it, keeping its generation,
# unless the device has a NEWER session by now (it moved to another gateway meanwhile:
# the table knows nothing older to replace, so nobody was kicked).  -> {1, old entry or
# false} when the entry is ours now, {0, newer entry} when our session is stale.
REANNOUNCE = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
local gen = tonumber(ARGV[3])
if cur then
  local c = cjson.decode(cur)
  if c[2] > gen or (c[2] == gen and c[1] ~= ARGV[4]) then
    return {0, cur}
  end
  if c[2] == gen then
    return {1, false}
  end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
local top = tonumber(redis.call('GET', KEYS[2]) or '0')
if top < gen then
  redis.call('SET', KEYS[2], ARGV[3])
end
return {1, cur or false}
"""

# Remove a device's route if it still names this gateway with a generation from before
# ARGV[3] (a session of an earlier run of the gateway).  -> sessions left, or -1.
FORGET = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local c = cjson.decode(cur)
  if c[1] == ARGV[2] and c[2] < tonumber(ARGV[3]) then
    redis.call('HDEL', KEYS[1], ARGV[1])
    return redis.call('HLEN', KEYS[1])
  end
end
return -1
"""
