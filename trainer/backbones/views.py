"""The backbone catalogue page (admins): which pretrained backbones this host has,
and how to install the others. `fetch_weights --list` prints the same table."""

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from trainer.ml import backbones


@staff_member_required
def backbone_list_view(request: HttpRequest) -> HttpResponse:
    context = {"rows": backbones.table(), "cache_dir": backbones.cache_dir(), "files_dir": backbones.files_dir()}
    return render(request, "trainer/backbones.html", context)
