"""The Lua scripts of the assistant's replies across nodes (replies.py): each runs
atomically in Redis, so two nodes asked at once cannot both pass a limit, and a reply
whose node stopped is removed, and announced, once.

Keys, under the cluster prefix ``P``: ``P:ai:room:<doc>`` (reply -> "<node> <user>"),
``P:ai:user:<user>`` (reply -> doc), ``P:ai:leases`` ("<doc> <reply> <user>" -> when
its lease ends, ms, Redis' clock) and ``P:ai:text:<reply>`` (its chunks). As in
scripts.py, a script computes its keys from its arguments, which a single Redis (or a
Sentinel's primary) allows; Redis Cluster would not.
"""

from __future__ import annotations

_PRELUDE = """
local P = ARGV[1]
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function release(doc, reply, user)
  redis.call('HDEL', P .. ':ai:room:' .. doc, reply)
  redis.call('HDEL', P .. ':ai:user:' .. user, reply)
  redis.call('DEL', P .. ':ai:text:' .. reply)
  return redis.call('ZREM', P .. ':ai:leases', doc .. ' ' .. reply .. ' ' .. user)
end
-- The replies whose lease ended, removed; each returned to the one caller that did.
local function purge(now)
  local gone = redis.call('ZRANGEBYSCORE', P .. ':ai:leases', '-inf', now)
  for _, m in ipairs(gone) do
    local doc, reply, user = string.match(m, '^(%S+) (%S+) (%S+)$')
    release(doc, reply, user)
  end
  return gone
end
"""

# ARGV: P, doc, reply, user, node, per room, per user, lease ms.
# Returns {0 admitted | 1 the room is full | 2 the user is, {expired entries}}.
ADMIT = (
    _PRELUDE
    + """
local doc, reply, user = ARGV[2], ARGV[3], ARGV[4]
local now = now_ms()
local gone = purge(now)
local room, mine = P .. ':ai:room:' .. doc, P .. ':ai:user:' .. user
if redis.call('HLEN', room) >= tonumber(ARGV[6]) then return {1, gone} end
if redis.call('HLEN', mine) >= tonumber(ARGV[7]) then return {2, gone} end
redis.call('HSET', room, reply, ARGV[5] .. ' ' .. user)
redis.call('HSET', mine, reply, doc)
redis.call('ZADD', P .. ':ai:leases', now + tonumber(ARGV[8]), doc .. ' ' .. reply .. ' ' .. user)
return {0, gone}
"""
)

# ARGV: P, doc, reply, user. Queued after the reply's last event (no answer read).
RELEASE = _PRELUDE + "release(ARGV[2], ARGV[3], ARGV[4])\nreturn 0\n"

# ARGV: P, lease ms, this node's entries... Their leases renewed (those still there);
# then the expired entries removed. Returns {expired entries}.
BEAT = (
    _PRELUDE
    + """
local now = now_ms()
local leases = P .. ':ai:leases'
for i = 3, #ARGV do
  if redis.call('ZSCORE', leases, ARGV[i]) then
    redis.call('ZADD', leases, now + tonumber(ARGV[2]), ARGV[i])
  end
end
return purge(now)
"""
)

# ARGV: P, doc. The room's replies whose lease holds: {{reply, node, {chunks}}, ...}.
READ = (
    _PRELUDE
    + """
local doc = ARGV[2]
local now = now_ms()
local entries = redis.call('HGETALL', P .. ':ai:room:' .. doc)
local out = {}
for i = 1, #entries, 2 do
  local reply = entries[i]
  local node, user = string.match(entries[i + 1], '^(%S+) (%S+)$')
  local until_ms = redis.call('ZSCORE', P .. ':ai:leases', doc .. ' ' .. reply .. ' ' .. user)
  if until_ms and tonumber(until_ms) > now then
    out[#out + 1] = {reply, node, redis.call('LRANGE', P .. ':ai:text:' .. reply, 0, -1)}
  end
end
return out
"""
)
