-- Take up to n waiting ids at once.
-- KEYS: queue, processing, attempts, workers, givebacks. ARGV: most ids to take, worker.
-- LMOVEs up to n ids RIGHT -> LEFT (as BLMOVE does) and counts a delivery of each; returns
-- id, attempts, give-backs, ... (the give-backs only read: the worker judges them).
local out = {}
for _ = 1, tonumber(ARGV[1]) do
  local id = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not id then break end
  out[#out + 1] = id
  out[#out + 1] = redis.call('HINCRBY', KEYS[3], id, 1)
  out[#out + 1] = tonumber(redis.call('HGET', KEYS[5], id) or '0') or 0
end
if #out > 0 then redis.call('SADD', KEYS[4], ARGV[2]) end
return out
