"""Paused queues, the audit log, operators' permissions, and the groups that bundle them."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


# The suggested operator groups (README, "Operations"): an administrator adds users to them in the admin.
OPERATOR_GROUPS = {
    "Operators (read-only)": ["view_audit"],
    "Retriers": ["view_audit", "bulk_retry"],
    "Pausers": ["view_audit", "pause_queue"],
    "Operators": ["view_audit", "bulk_retry", "bulk_cancel", "pause_queue"],
}


def create_operator_groups(apps, schema_editor):
    # Django creates permissions after the whole migrate run; these groups need them now.
    from django.contrib.auth.management import create_permissions

    app_config = apps.get_app_config("jobs")
    app_config.models_module = True
    create_permissions(app_config, apps=apps, verbosity=0, using=schema_editor.connection.alias)
    app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, codenames in OPERATOR_GROUPS.items():
        group, _ = Group.objects.using(schema_editor.connection.alias).get_or_create(name=name)
        group.permissions.add(*Permission.objects.using(schema_editor.connection.alias).filter(
            content_type__app_label="jobs", codename__in=codenames))


def remove_operator_groups(apps, schema_editor):
    apps.get_model("auth", "Group").objects.using(schema_editor.connection.alias).filter(
        name__in=list(OPERATOR_GROUPS)).delete()


class Migration(migrations.Migration):

    dependencies = [
        ('jobs', '0005_task_api_and_tracked_tasks'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        ('auth', '0012_alter_user_first_name_max_length'),
        ('contenttypes', '0002_remove_content_type_name'),
    ]

    operations = [
        migrations.AlterModelOptions(
            name='job',
            options={'ordering': ['-created_at'], 'permissions': [('pause_queue', 'Can pause and resume queues'), ('bulk_retry', 'Can retry many jobs at once, by filter'), ('bulk_cancel', 'Can cancel many jobs at once, by filter'), ('view_audit', "Can read the audit log of operators' actions")]},
        ),
        migrations.CreateModel(
            name='QueuePause',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('queue', models.CharField(max_length=64, unique=True)),
                ('paused_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('paused_by', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['queue'],
            },
        ),
        migrations.CreateModel(
            name='AuditEntry',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('actor_name', models.CharField(blank=True, default='', help_text="The actor's username then: kept when the user is renamed or deleted.", max_length=150)),
                ('action', models.CharField(choices=[('queue_pause', 'Paused a queue'), ('queue_resume', 'Resumed a queue'), ('job_retry', 'Retried a job'), ('job_cancel', 'Cancelled a job'), ('bulk_retry', 'Retried jobs by filter'), ('bulk_cancel', 'Cancelled jobs by filter'), ('token_revoke', 'Revoked an API token'), ('schedule_create', 'Created a schedule'), ('schedule_change', 'Changed a schedule'), ('schedule_delete', 'Deleted a schedule'), ('schedule_pause', 'Paused a schedule'), ('schedule_resume', 'Resumed a schedule'), ('schedule_run', 'Ran a schedule now')], max_length=32)),
                ('target', models.CharField(blank=True, default='', help_text='What was acted on, as type:id (queue:cpu, job:<id>, token:<prefix>, schedule:<name>); empty for a bulk action, which has a filter.', max_length=300)),
                ('filter', models.JSONField(blank=True, default=dict, help_text="A bulk action's filter, as given.")),
                ('count', models.PositiveIntegerField(blank=True, help_text='How many jobs it changed (bulk: so far, batch by batch).', null=True)),
                ('detail', models.JSONField(blank=True, default=dict, help_text="More about it: a bulk action's matched count.")),
                ('at', models.DateTimeField(default=django.utils.timezone.now)),
                ('actor', models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name='audit_entries', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'ordering': ['-at', '-id'],
                'indexes': [models.Index(fields=['-at', '-id'], name='audit_at_idx'), models.Index(fields=['action', '-at'], name='audit_action_at_idx'), models.Index(fields=['actor_name', '-at'], name='audit_actor_at_idx'), models.Index(fields=['target', '-at'], name='audit_target_at_idx')],
            },
        ),
        migrations.AddIndex(
            model_name='job',
            index=models.Index(fields=['schedule_name', '-created_at'], name='job_schedule_created_idx'),
        ),
        migrations.RunPython(create_operator_groups, remove_operator_groups),
    ]
