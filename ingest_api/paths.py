"""The paths the intake serves itself, shared with the read routes and the OpenAPI document."""

EVENTS_PATH = "/api/partner/events"
BATCH_PATH = f"{EVENTS_PATH}/batch"
