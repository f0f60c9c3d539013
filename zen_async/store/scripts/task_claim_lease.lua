-- task_claim_lease: claim the next pending task of an agent type for one agent, lease the
-- agent a port for it, record the lease in the task and, if asked, start the task, in ONE
-- atomic step: all of it happens or none of it does. Also notes the host in the agent's host
-- index and appends the task's events (task_starting, then task_running when started) to the
-- agent's shard stream and audit trail, with their pub/sub hints.
--
-- For deployments whose keys all live on one server (standalone, Sentinel). The task keys
-- (tasks keyspace) and the host's port keys, the agent's host index and its shard stream
-- (state keyspace) are in two DBs in the databases layout: the script reaches the state DB
-- with SELECT, which stays local to the script. On Cluster the agent type's slot, the host's
-- and the agent shard's differ, so tasks.py claims in steps there (task_claim,
-- port_allocate, task_set_port or task_lease_start).
--
-- Tasks DB (ARGV[5]):
-- KEYS[1]  the agent type's queue (<P>queue); every other task key is <P>... (same hash tag)
-- KEYS[2]  this claim's operation marker (<P>op:<uuid>): a resend after a lost reply returns
--          the task the first send claimed, and claims and leases nothing more
-- State DB (ARGV[6]):
-- KEYS[3..9]  free, used, exp, owner, byagent, quar, resv of the host (see port_allocate.lua)
-- KEYS[10] the host's fencing-token counter
-- KEYS[11] the agent's host index (see port_agent_hosts.lua)
-- ARGV[1]  P, the agent type's prefix
-- ARGV[2]  the claiming agent's id
-- ARGV[3]  its process id ("" for none)
-- ARGV[4]  how long the operation marker is kept, in ms
-- ARGV[5]  the tasks DB; ARGV[6] the state DB ("" for both: one DB, no SELECT)
-- ARGV[7]  the lease holder: "<tenant>/<agent>"
-- ARGV[8]  port range start (inclusive); ARGV[9] its end (exclusive)
-- ARGV[10] lease TTL in ms
-- ARGV[11] at most this many expired leases of the host are reclaimed first
-- ARGV[12] the host name
-- ARGV[13] grace of the host index entry in ms (clock skew between nodes)
-- ARGV[14] "1" to start the task (status running), "0" to leave it starting
-- ARGV[15] the agent's shard prefix in the state keyspace (its "events" stream and
--          "audit:<agent>" trail, see agent_event.lua), "" for no events
-- ARGV[16] audit trail max length (approximate trim)
-- ARGV[17] pub/sub channel for the events' hints ("" for none)
-- ARGV[18] the shard stream's logical name, for the hints
-- ARGV[19] event data fields stored as "[redacted]" (REDIS_REDACT_FIELDS), as ",a,b,"
--
-- Returns nil when nothing is pending (nothing is leased). Else {outcome, lease, reclaimed,
-- task}: "claimed" with lease {port, token, expiry ms} and the task's hash as a flat
-- field/value list; "capacity" with lease {message} and no task when no port of the range is
-- free: then the task stays pending exactly as it was (its queue place, version, attempts);
-- "replayed" (a resend of a claim that was applied) with no lease and the task's hash.
-- reclaimed: port, token, holder of each expired lease reclaimed on the way (also on
-- "capacity").
-- Task hash as task_claim.lua and task_set_port.lua leave it; the version goes up by one for
-- the claim (with its lease) and one more for the start.
-- idempotent: true
local P, agent = ARGV[1], ARGV[2]
local tasks_db, state_db = ARGV[5], ARGV[6]
local function use(db)
  if db ~= "" then redis.call("SELECT", db) end
end

use(tasks_db)
local done = redis.call("GET", KEYS[2])
if done then
  return {"replayed", {}, {}, redis.call("HGETALL", P .. "task:" .. done)}
end

-- The next pending task, left in the queue until a port is found for it. Every step that
-- moves a task out of "pending" removes its queue member, so anything else found here is
-- debris (a task deleted mid-way): dropped, and the next one taken.
local member, id, key, f
while true do
  member = redis.call("ZRANGE", KEYS[1], 0, 0)[1]
  if not member then
    return false
  end
  id = string.sub(member, 18)
  key = P .. "task:" .. id
  f = redis.call("HMGET", key, "status", "ver", "att", "tmo", "cseq", "type")
  if f[1] == "pending" then
    break
  end
  redis.call("ZREM", KEYS[1], member)
end

local t = redis.call("TIME")
local now = t[1] * 1000 + math.floor(t[2] / 1000)

use(state_db)
local free, used, exp, owner, byagent, quar, resv =
  KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9]
local seq = KEYS[10]
--@include port_intervals
--@include port_lease
--@include agent_event
local first, last = tonumber(ARGV[8]), tonumber(ARGV[9])
ensure_free()
local reclaimed = reclaim_expired(now, tonumber(ARGV[11]))
local port = lowest_free(first, last)
if not port then
  return {"capacity", {exhausted(first, last, ARGV[12])}, reclaimed, {}}
end
local ttl = tonumber(ARGV[10])
local token, expiry = lease_port(port, ARGV[7], now, ttl)
note_host(KEYS[11], ARGV[12], now, ttl, tonumber(ARGV[13]))

use(tasks_db)
local start = ARGV[14] == "1"
local status = start and "running" or "starting"
local attempts, version = tonumber(f[3]) + 1, tonumber(f[2]) + 1
local deadline = now + tonumber(f[4])
redis.call("ZREM", KEYS[1], member)
redis.call("HSET", key, "status", status, "agent", agent, "att", attempts,
  "ver", start and version + 1 or version, "updated", now, "deadline", deadline,
  "port", port, "host", ARGV[12], "token", token)
if ARGV[3] ~= "" then
  redis.call("HSET", key, "pid", ARGV[3])
end
redis.call("ZREM", P .. "idx:pending", id)
redis.call("ZADD", P .. "idx:" .. status, f[5], id)
redis.call("ZADD", P .. "deadlines", deadline, id)
redis.call("SET", KEYS[2], id, "PX", ARGV[4])
local task = redis.call("HGETALL", key)

if ARGV[15] ~= "" then
  use(state_db)
  local redact = ARGV[19]
  local function field(name, json)
    if string.find(redact, "," .. name .. ",", 1, true) then
      json = '"[redacted]"'
    end
    return '"' .. name .. '":' .. json
  end
  -- Task ids, agent types and statuses are of [A-Za-z0-9_.:-]: nothing to escape.
  local function data(from, to, v)
    return "{" .. table.concat({field("task_id", '"' .. id .. '"'),
      field("agent_type", '"' .. f[6] .. '"'), field("from", '"' .. from .. '"'),
      field("status", '"' .. to .. '"'), field("attempts", attempts), field("version", v),
      field("port", port)}, ",") .. "}"
  end
  local audit_max, channel, stream = ARGV[16], ARGV[17], ARGV[18]
  emit_agent_event(ARGV[15], agent, "task_starting", data("pending", "starting", version), now,
    audit_max, channel, stream, {})
  if start then
    emit_agent_event(ARGV[15], agent, "task_running", data("starting", "running", version + 1),
      now, audit_max, channel, stream, {})
  end
end
return {"claimed", {port, token, expiry}, reclaimed, task}
