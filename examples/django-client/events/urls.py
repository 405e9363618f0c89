from django.urls import path

from . import views

urlpatterns = [path("trigger_event/", views.trigger_event, name="trigger_event")]
