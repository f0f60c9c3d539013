-- agent_event: append an event about an agent to its shard stream and, with the same entry
-- id, to its audit trail (approximately capped), then send a pub/sub hint. Included by the
-- agent_* scripts with "--@include agent_event".
--   P          the shard prefix ("zen:t:<tenant>:{z<n>}:")
--   id         the agent id
--   etype      the event type
--   data       the payload, already JSON
--   now        server time in ms
--   audit_max  audit trail max length
--   channel    hint channel ("" for none)
--   stream     the shard stream's logical name, for the hint
--   hint       extra hint fields (a table), e.g. {to = "ready", version = 3}
local function emit_agent_event(P, id, etype, data, now, audit_max, channel, stream, hint)
  local fields = {"time", now, "type", etype, "agent", id, "v", "1", "data", data}
  local event = redis.call("XADD", P .. "events", "*", unpack(fields))
  redis.call("XADD", P .. "audit:" .. id, "MAXLEN", "~", audit_max, event, unpack(fields))
  if channel ~= "" then
    hint["stream"] = stream
    hint["id"] = event
    hint["type"] = etype
    hint["agent"] = id
    redis.call("PUBLISH", channel, cjson.encode(hint))
  end
  return event
end
