-- GET /app/valid/TOKEN, cycling through the known tokens (the bench fills in the path).
local tokens = {}
for line in io.lines("TOKENS_FILE") do tokens[#tokens + 1] = line end
local index = 0
request = function()
  index = index + 1
  return wrk.format("GET", "/app/valid/" .. tokens[(index % #tokens) + 1])
end
