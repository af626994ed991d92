"""The example's URLs: the admin, two views that enqueue, one that reads a result."""

from django.contrib import admin
from django.urls import path
from polls import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("polls/<int:poll_id>/vote/", views.vote, name="vote"),
    path("reports/sum/", views.add_numbers, name="add"),
    path("tasks/<str:task_id>/", views.task_result, name="task-result"),
]
