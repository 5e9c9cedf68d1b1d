"""The dashboard (HTML): thin views over selectors and services."""
from django.contrib.auth.decorators import login_required
from django.http import Http404
from django.shortcuts import render

from . import selectors


@login_required
def job_list(request):
    jobs = list(selectors.job_list(user=request.user)[:50])
    return render(request, "jobs/list.html", {"jobs": jobs})


@login_required
def job_detail(request, job_id):
    job = selectors.job_get(user=request.user, job_id=job_id)
    if job is None:
        raise Http404("no such job")
    return render(request, "jobs/detail.html", {"job": job, "result": selectors.job_result_value(job=job)})
