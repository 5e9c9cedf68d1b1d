import logging, pytest
pytestmark = pytest.mark.django_db

def test_probe(api, settings, caplog):
    settings.JOBS_MAX_BODY_BYTES = 10_000_000
    d = 50000
    raw = '{"kind": "noop", "params": {"deep": ' + '{"a": ' * d + "1" + "}" * d + "}}"
    with caplog.at_level(logging.DEBUG):
        r = api.post("/api/jobs", raw=raw)
    print("RESULT", r.status_code, r.content[:100])
    for rec in caplog.records:
        print("LOG", rec.name, rec.levelname, rec.getMessage()[:200], rec.exc_info and repr(rec.exc_info[1])[:300])
