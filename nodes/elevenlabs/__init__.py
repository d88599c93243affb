"""The ElevenLabs Agents WebSocket protocol as a pair of nodes: ``transport.elevenlabs`` (client
messages in) and ``protocol_out.elevenlabs`` (server messages out). The server only accepts the
connection; what each message means lives here (ARCHITECTURE.md §7)."""
