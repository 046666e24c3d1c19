"""The HTTP API's operations, behind `batchline.edge` (body limits, error shapes).

- `routes`: the route table, one `Route` per operation, read by the edge and by `openapi`;
- `handlers`: one handler per operation; `models`: request and response bodies (pydantic);
- `submit`: submitting a job (Idempotency-Key, input_uri rules, inline staging);
- `outputs`: a job's summary.json and its results.jsonl streamed;
- `openapi`: the OpenAPI 3.1 document, generated from the table and the models.

The api function reads no job's working data (the work bucket): it stages inline
requests create-only, reads input objects callers name in the input bucket, and reads a
job's own outputs in the output bucket. Only the api function imports this package
(pydantic stays out of the others).
"""
