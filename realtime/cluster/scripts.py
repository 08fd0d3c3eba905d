"""The Lua scripts of shared presence (presence.py): each runs atomically in Redis, so
two nodes never both announce a user's arrival, and a dead node is reaped once.

Keys, under the cluster prefix ``P`` (``N`` a node's id in hex):

- ``P:nodes``: hash, node -> when it started (the nodes registered and not reaped);
- ``P:lease:N``: the node's lease (its stats as JSON), expiring unless renewed;
- ``P:held:N``: set of what the node holds: ``r|<doc>|<user>`` (a user present in a
  room through this node), ``u|<user>`` (the user's connections counted here);
- ``P:where:<doc>``: hash, user -> the nodes (space-separated) the user is present on;
- ``P:room:<doc>``: hash, node -> the node's presence entries for the room (JSON list);
- ``P:conns:<user>``: hash, node -> the user's connections on that node (the cap).

The keys a script touches are computed inside it (a room's keys from its id), which a
single Redis (or a Sentinel's primary) allows; Redis Cluster would not.
"""

from __future__ import annotations

_PRELUDE = """
local P = ARGV[1]
local function add(s, n)
  if not s or s == '' then return n, true end
  for tok in string.gmatch(s, '%S+') do
    if tok == n then return s, false end
  end
  return s .. ' ' .. n, false
end
local function remove(s, n)
  if not s then return '', false end
  local out, found = {}, false
  for tok in string.gmatch(s, '%S+') do
    if tok == n then found = true else out[#out + 1] = tok end
  end
  return table.concat(out, ' '), found
end
-- Take node x out of a user's room; true when nobody holds the user there any more.
local function out_of(doc, user, x)
  local where = P .. ':where:' .. doc
  local s, found = remove(redis.call('HGET', where, user), x)
  redis.call('SREM', P .. ':held:' .. x, 'r|' .. doc .. '|' .. user)
  if not found then return false end
  if s == '' then
    redis.call('HDEL', where, user)
    return true
  end
  redis.call('HSET', where, user, s)
  return false
end
local function into(doc, user, x)
  local where = P .. ':where:' .. doc
  local s, first = add(redis.call('HGET', where, user), x)
  redis.call('HSET', where, user, s)
  redis.call('SADD', P .. ':held:' .. x, 'r|' .. doc .. '|' .. user)
  return first
end
-- Everything node x holds, removed; the {doc, user} whose last node it was.
local function reap(x, left)
  for _, m in ipairs(redis.call('SMEMBERS', P .. ':held:' .. x)) do
    local kind, a, b = string.match(m, '^(%a)|([^|]+)|?(.*)$')
    if kind == 'r' then
      if out_of(a, b, x) then left[#left + 1] = {a, b} end
      redis.call('HDEL', P .. ':room:' .. a, x)
    elseif kind == 'u' then
      redis.call('HDEL', P .. ':conns:' .. a, x)
    end
  end
  redis.call('DEL', P .. ':held:' .. x)
  return left
end
"""

# ARGV: P, node, ops as JSON [[doc, [left users], [joined users], entry], ...] in the
# order they happened (entry: the node's entries for the room now, "" when it has none
# there, false to leave them), releases as JSON {user: connections closed}.
# Returns, per op, {doc, {users who left the cluster's room}, {users who arrived}}.
CHANGES = (
    _PRELUDE
    + """
local N = ARGV[2]
local out = {}
for _, op in ipairs(cjson.decode(ARGV[3])) do
  local doc, gone, came = op[1], {}, {}
  for _, user in ipairs(op[2]) do
    if out_of(doc, user, N) then gone[#gone + 1] = user end
  end
  for _, user in ipairs(op[3]) do
    if into(doc, user, N) then came[#came + 1] = user end
  end
  local entry = op[4]
  if entry == '' then
    redis.call('HDEL', P .. ':room:' .. doc, N)
  elseif entry then
    redis.call('HSET', P .. ':room:' .. doc, N, entry)
  end
  out[#out + 1] = {doc, gone, came}
end
for user, closed in pairs(cjson.decode(ARGV[4])) do
  local key = P .. ':conns:' .. user
  if redis.call('HINCRBY', key, N, -closed) <= 0 then
    redis.call('HDEL', key, N)
    redis.call('SREM', P .. ':held:' .. N, 'u|' .. user)
  end
end
return out
"""
)

# ARGV: P, node, lease JSON, lease ms, started. Renews the lease, registers the node
# if it is not (first beat, or it was taken for dead), and reaps every other node
# whose lease expired. Returns {1 if it was not registered, {{doc, user}, ...} left}.
BEAT = (
    _PRELUDE
    + """
local N = ARGV[2]
redis.call('SET', P .. ':lease:' .. N, ARGV[3], 'PX', ARGV[4])
local fresh = redis.call('HSETNX', P .. ':nodes', N, ARGV[5])
local left = {}
for _, x in ipairs(redis.call('HKEYS', P .. ':nodes')) do
  if x ~= N and redis.call('EXISTS', P .. ':lease:' .. x) == 0 then
    redis.call('HDEL', P .. ':nodes', x)
    reap(x, left)
  end
end
return {fresh, left}
"""
)

# ARGV: P, node, rooms JSON [[doc, [users], entry], ...], connections JSON {user: n}.
# Replaces what the node holds with what it says it holds (after it was taken for
# dead, or lost writes while Redis was away). Returns {{doc, user} left, {doc, user}
# arrived}: the changes the cluster has not heard of.
SYNC = (
    _PRELUDE
    + """
local N = ARGV[2]
local before = reap(N, {})
local gone, came, back = {}, {}, {}
for _, room in ipairs(cjson.decode(ARGV[3])) do
  local doc = room[1]
  for _, user in ipairs(room[2]) do
    if into(doc, user, N) then came[#came + 1] = {doc, user} end
    back[doc .. '|' .. user] = true
  end
  redis.call('HSET', P .. ':room:' .. doc, N, room[3])
end
local arrived = {}
local left_here = {}
for _, pair in ipairs(before) do left_here[pair[1] .. '|' .. pair[2]] = true end
for _, pair in ipairs(before) do
  if not back[pair[1] .. '|' .. pair[2]] then gone[#gone + 1] = pair end
end
for _, pair in ipairs(came) do
  if not left_here[pair[1] .. '|' .. pair[2]] then arrived[#arrived + 1] = pair end
end
for user, n in pairs(cjson.decode(ARGV[4])) do
  redis.call('HSET', P .. ':conns:' .. user, N, n)
  redis.call('SADD', P .. ':held:' .. N, 'u|' .. user)
end
return {gone, arrived}
"""
)

# ARGV: P, node. The node leaves (shutting down): its records and lease go. Returns
# {{doc, user}, ...} whose last node it was.
LEAVE = (
    _PRELUDE
    + """
local N = ARGV[2]
redis.call('HDEL', P .. ':nodes', N)
redis.call('DEL', P .. ':lease:' .. N)
return reap(N, {})
"""
)

# ARGV: P, node, user, cap. One more connection of the user on this node, unless the
# user holds ``cap`` over every node already. Returns 1 (counted) or 0 (refused).
ADMIT = (
    _PRELUDE
    + """
local N, user, cap = ARGV[2], ARGV[3], tonumber(ARGV[4])
local key = P .. ':conns:' .. user
local total = 0
for _, v in ipairs(redis.call('HVALS', key)) do total = total + tonumber(v) end
if total >= cap then return 0 end
redis.call('HINCRBY', key, N, 1)
redis.call('SADD', P .. ':held:' .. N, 'u|' .. user)
return 1
"""
)

# ARGV: P. The leases of the nodes alive, as stored (JSON).
LEASES = """
local P = ARGV[1]
local out = {}
for _, x in ipairs(redis.call('HKEYS', P .. ':nodes')) do
  local lease = redis.call('GET', P .. ':lease:' .. x)
  if lease then out[#out + 1] = lease end
end
return out
"""
